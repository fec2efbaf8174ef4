"""Finding and loading the CANN libraries (docs/npu.md, "NPU setup"; docs/abi.md §5): searched
at first use, the result (a failure too) cached until ``reset()``; never unloaded."""

from __future__ import annotations

import ctypes
import os
import threading
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Dict, List, Mapping, Optional, Tuple

from ..errors import LibraryNotFoundError
from ..spec import BACKWARD_V3
from .prototypes import bind, library_error

__all__ = [
    "ENV_LIB_DIR", "DEFAULT_TOOLKIT_LIB64", "ROLES", "Place", "Attempt", "Libraries",
    "search_places", "load_libraries", "libraries", "bindings", "reset", "after_fork",
    "generation",
]

ENV_LIB_DIR = "ACLNN_FAG_LIB_DIR"
DEFAULT_TOOLKIT_LIB64 = "/usr/local/Ascend/ascend-toolkit/latest/lib64"

# role -> (file names in order of preference, dlopen mode, symbol the library must export)
ROLES: Dict[str, Tuple[Tuple[str, ...], int, Optional[str]]] = {
    "runtime": (("libascendcl.so", "libacl_rt.so"), ctypes.RTLD_GLOBAL, "aclrtMalloc"),
    "nnopbase": (("libnnopbase.so",), ctypes.RTLD_GLOBAL, None),
    "opapi": (("libopapi_transformer.so", "libopapi.so"), ctypes.RTLD_LOCAL,
              BACKWARD_V3.phase1),
}
ROLE_ORDER = ("runtime", "nnopbase", "opapi")
# Optional extra: torch_npu resolves the aclrtCtx*SysParamOpt pair through libacl_op_compiler
# (docs/abi.md §2a); it is loaded only when the runtime handle does not export the setter.
OPTIONAL_ROLE = ("op_compiler", ("libacl_op_compiler.so",), "aclrtCtxSetSysParamOpt")

HINT = ("Install the CANN toolkit and run `source /usr/local/Ascend/ascend-toolkit/set_env.sh` "
        "(or `/usr/local/Ascend/set_env.sh` on newer installs), or set ACLNN_FAG_LIB_DIR to the "
        "directory holding libascendcl.so, libnnopbase.so and libopapi.so.")


@dataclass(frozen=True)
class Place:
    """One place searched: ``source`` says where from; ``directory`` None: the system loader."""

    source: str
    directory: Optional[str]

    def describe(self) -> str:
        return "system loader" if self.directory is None else f"{self.source} ({self.directory})"


@dataclass(frozen=True)
class Attempt:
    """One load attempt. ``outcome``: "loaded", "not found", "failed to load", "missing symbol"."""

    role: str
    name: str
    place: str
    path: str
    outcome: str
    error: str = ""

    def line(self) -> str:
        text = f"{self.role}: {self.path} [{self.place}]: {self.outcome}"
        return f"{text}: {self.error}" if self.error else text


@dataclass
class Libraries:
    """The loaded handles (``ctypes.CDLL``), their paths and every attempt made."""

    handles: Dict[str, ctypes.CDLL]
    paths: Dict[str, str]
    tried: List[Attempt] = field(default_factory=list)
    places: List[Place] = field(default_factory=list)

    @property
    def key(self) -> tuple:
        """Identity of the loaded libraries (the dlopen handles)."""
        return tuple(self.handles[r]._handle for r in ROLE_ORDER)


def search_places(environ: Optional[Mapping[str, str]] = None) -> Tuple[List[Place], List[str]]:
    """The places to search, in order, and notes about skipped (unset) variables."""
    env = os.environ if environ is None else environ
    places: List[Place] = []
    notes: List[str] = []
    seen = set()

    def add(source: str, directory: Optional[str]) -> None:
        key = os.path.realpath(directory) if directory else None
        if key in seen:
            notes.append(f"{source}: same directory as an earlier place ({directory}), skipped")
            return
        seen.add(key)
        places.append(Place(source, directory))

    for var in (ENV_LIB_DIR, "ASCEND_HOME_PATH", "ASCEND_TOOLKIT_HOME"):
        value = env.get(var, "").strip()
        if not value:
            notes.append(f"${var}: not set")
        elif var == ENV_LIB_DIR:
            add(f"${var}", value)
        else:
            add(f"${var}/lib64", os.path.join(value, "lib64"))
    add("default toolkit", DEFAULT_TOOLKIT_LIB64)
    add("system loader", None)
    return places, notes


def _try_load(role: str, name: str, place: Place, mode: int, symbol: Optional[str],
              tried: List[Attempt], searched_dirs: Tuple[str, ...] = ()) -> Optional[ctypes.CDLL]:
    path = name if place.directory is None else os.path.join(place.directory, name)

    def note(outcome: str, error: str = "", where: str = path) -> None:
        tried.append(Attempt(role, name, place.describe(), where, outcome, error))

    if place.directory is None:
        earlier = _already_loaded(name)
        ld_path = tuple(os.path.realpath(p)
                        for p in os.environ.get("LD_LIBRARY_PATH", "").split(":") if p)
        if earlier is not None and os.path.realpath(earlier) in _explicit_paths and \
                os.path.dirname(os.path.realpath(earlier)) not in searched_dirs + ld_path:
            note("not found", f"only the copy aclnn_fag loaded earlier from {earlier} is "
                 "present, and that directory is no longer searched")
            return None
    elif not os.path.exists(path):
        note("not found", "no such file")
        return None
    try:
        lib = ctypes.CDLL(path, mode=mode)
    except OSError as exc:
        text = str(exc)
        # a missing dependency names the dependency instead
        missing = place.directory is None and text.startswith(name + ":") and "No such file" in text
        note("not found" if missing else "failed to load", text)
        return None
    if symbol is not None and not hasattr(lib, symbol):
        note("missing symbol", f"does not export {symbol}")
        return None
    if place.directory is None:
        note("loaded", where=_loaded_path(lib) or name)
    else:
        _explicit_paths.add(os.path.realpath(path))
        note("loaded")
    return lib


# realpaths of libraries this package dlopen'ed from an explicit directory
_explicit_paths: set = set()


class _LinkMap(ctypes.Structure):
    _fields_ = [("l_addr", ctypes.c_size_t), ("l_name", ctypes.c_char_p)]


def _loaded_path(lib: ctypes.CDLL) -> Optional[str]:
    """The file behind a dlopen handle (dlinfo RTLD_DI_LINKMAP), or None."""
    for libname in (None, "libdl.so.2"):    # glibc 2.34 and later export dlinfo from libc
        try:
            dlinfo = ctypes.CDLL(libname).dlinfo
        except (OSError, AttributeError):
            continue
        lm = ctypes.POINTER(_LinkMap)()
        if dlinfo(ctypes.c_void_p(lib._handle), 2, ctypes.byref(lm)) == 0 and lm \
                and lm.contents.l_name:    # 2: RTLD_DI_LINKMAP
            return lm.contents.l_name.decode("utf-8", errors="replace")
        break
    return None


def _already_loaded(name: str) -> Optional[str]:
    """Path of an already loaded library that ``dlopen(name)`` would return, else None."""
    try:
        lib = ctypes.CDLL(name, mode=os.RTLD_NOLOAD | ctypes.RTLD_LOCAL)
    except OSError:
        return None
    return _loaded_path(lib) or name


def load_libraries(environ: Optional[Mapping[str, str]] = None,
                   places: Optional[List[Place]] = None) -> Libraries:
    """Search and load the three roles (uncached); LibraryNotFoundError lists every attempt."""
    notes: List[str] = []
    if places is None:
        places, notes = search_places(environ)
    tried: List[Attempt] = []
    handles: Dict[str, ctypes.CDLL] = {}
    paths: Dict[str, str] = {}
    searched = tuple(os.path.realpath(p.directory) for p in places if p.directory)

    def first(role: str, names, mode: int, symbol: Optional[str]) -> bool:
        for place in places:
            for name in names:
                lib = _try_load(role, name, place, mode, symbol, tried, searched)
                if lib is not None:
                    handles[role] = lib
                    paths[role] = tried[-1].path
                    return True
        return False

    # every role is tried, also after a missing one: the report shows them all
    missing = [role for role in ROLE_ORDER if not first(role, *ROLES[role])]
    phase2 = BACKWARD_V3.phase2
    if "opapi" in handles and not hasattr(handles["opapi"], phase2):
        tried.append(Attempt("opapi", os.path.basename(paths["opapi"]), "", paths["opapi"],
                             "missing symbol", f"does not export {phase2}"))
        missing.append("opapi")
    if missing:
        raise _not_found(missing, places, notes, tried)
    role, names, symbol = OPTIONAL_ROLE
    if not hasattr(handles["runtime"], symbol):
        first(role, names[:1], ctypes.RTLD_LOCAL, symbol)
    return Libraries(handles, paths, tried, list(places))


def _not_found(roles, places, notes, tried) -> LibraryNotFoundError:
    what = "; ".join(f"{r} ({' or '.join(ROLES[r][0])})" for r in roles)
    lines = [f"cannot load the CANN libraries: {what}.",
             "Searched, in order: " + "; ".join(p.describe() for p in places) + "."]
    if notes:
        lines.append("Skipped: " + "; ".join(notes) + ".")
    lines.append("Attempts:")
    lines.extend("  " + a.line() for a in tried)
    lines.append(HINT)
    return library_error("\n".join(lines), tried, places, ", ".join(roles))


_cache = SimpleNamespace(lock=threading.RLock(), failure=None, bindings=None, generation=0)


def generation() -> int:
    """How many times the libraries were reset (a cached probe of an older one is stale)."""
    return _cache.generation


def after_fork() -> None:
    """In a forked child: a new lock (a parent thread may have held the old one at fork)."""
    _cache.lock = threading.RLock()


def bindings():
    """The bound prototype table (:class:`.prototypes.Bindings`), loaded on first use; the
    result, a LibraryNotFoundError too, is kept until reset()."""
    b = _cache.bindings
    if b is not None:
        return b
    with _cache.lock:
        if _cache.bindings is None and _cache.failure is None:
            try:
                _cache.bindings = bind(load_libraries())
            except LibraryNotFoundError as exc:
                _cache.failure = exc
        if _cache.failure is not None:
            f = _cache.failure
            raise library_error(f.rule, f.tried, f.places, f.role)
        return _cache.bindings


def libraries() -> Libraries:
    """The loaded libraries (those of :func:`bindings`). Raises LibraryNotFoundError."""
    return bindings().libraries


def reset() -> None:
    """Forget the cached result (the next use searches again). Loaded libraries stay mapped."""
    with _cache.lock:
        _cache.failure = None
        _cache.bindings = None
        _cache.generation += 1
