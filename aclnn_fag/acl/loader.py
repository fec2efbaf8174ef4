"""Finding and loading the CANN libraries (deferred failure, fixed search order).

Importing this module never touches the file system.  The first call that
needs the libraries (``bindings()``) searches, in this order, and reports every
attempt:

1. ``$ACLNN_FAG_LIB_DIR``
2. ``$ASCEND_HOME_PATH/lib64``
3. ``$ASCEND_TOOLKIT_HOME/lib64``
4. ``/usr/local/Ascend/ascend-toolkit/latest/lib64``
5. the system loader (plain soname: ``LD_LIBRARY_PATH``, ``ld.so.cache``, already
   loaded libraries)

Three roles are loaded, each from the first place where it loads:

* runtime: ``libascendcl.so`` (``RTLD_GLOBAL``), falling back to ``libacl_rt.so``;
* nnopbase: ``libnnopbase.so`` (``RTLD_GLOBAL``);
* op API: ``libopapi_transformer.so``, falling back to ``libopapi.so``; a
  library that loads but does not export the V3 op is skipped (recorded as
  "missing symbol") and the next name or place is tried.

Runtime functions (``acl*``/``aclrt*``) are resolved through the runtime handle;
the op, aclTensor, aclIntArray and executor functions through the op-API handle
(dlsym on a handle also searches its dependencies, which is how torch_npu finds
them), falling back to the other handles.  Binding the prototype table is done
in :mod:`.prototypes`.

A library already loaded in the process (e.g. by torch_npu) is what the system loader
step returns, which avoids a second copy of the runtime — except a copy this package
itself loaded from an explicit directory that is no longer searched (after
``ACLNN_FAG_LIB_DIR`` changed and ``reset()``); that one is reported as not found.

The result (success or failure) is cached process-wide behind a lock;
``reset()`` forgets it so that a changed ``ACLNN_FAG_LIB_DIR`` is honoured.
Libraries are never unloaded (``dlclose`` is unsafe with live handles).
"""

from __future__ import annotations

import ctypes
import os
import threading
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Tuple

from ..errors import LibraryNotFoundError

__all__ = [
    "ENV_LIB_DIR", "DEFAULT_TOOLKIT_LIB64", "ROLES", "Place", "Attempt", "Libraries",
    "search_places", "load_libraries", "libraries", "bindings", "reset", "last_failure",
]

ENV_LIB_DIR = "ACLNN_FAG_LIB_DIR"
DEFAULT_TOOLKIT_LIB64 = "/usr/local/Ascend/ascend-toolkit/latest/lib64"

PHASE1_SYMBOL = "aclnnFlashAttentionUnpaddingScoreGradV3GetWorkspaceSize"
PHASE2_SYMBOL = "aclnnFlashAttentionUnpaddingScoreGradV3"

# role -> (file names in order of preference, dlopen mode, symbol the library must export)
ROLES: Dict[str, Tuple[Tuple[str, ...], int, Optional[str]]] = {
    "runtime": (("libascendcl.so", "libacl_rt.so"), ctypes.RTLD_GLOBAL, "aclrtMalloc"),
    "nnopbase": (("libnnopbase.so",), ctypes.RTLD_GLOBAL, None),
    "opapi": (("libopapi_transformer.so", "libopapi.so"), ctypes.RTLD_LOCAL, PHASE1_SYMBOL),
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
    """One place searched: ``source`` says where it came from, ``directory`` None = system loader."""

    source: str
    directory: Optional[str]

    def describe(self) -> str:
        if self.directory is None:
            return "system loader"
        return f"{self.source} ({self.directory})" if self.source != self.directory else self.directory


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

    value = env.get(ENV_LIB_DIR, "").strip()
    if value:
        add(f"${ENV_LIB_DIR}", value)
    else:
        notes.append(f"${ENV_LIB_DIR}: not set")
    for var in ("ASCEND_HOME_PATH", "ASCEND_TOOLKIT_HOME"):
        value = env.get(var, "").strip()
        if value:
            add(f"${var}/lib64", os.path.join(value, "lib64"))
        else:
            notes.append(f"${var}: not set")
    add("default toolkit", DEFAULT_TOOLKIT_LIB64)
    add("system loader", None)
    return places, notes


def _try_load(role: str, name: str, place: Place, mode: int, symbol: Optional[str],
              tried: List[Attempt], searched_dirs: Tuple[str, ...] = ()) -> Optional[ctypes.CDLL]:
    if place.directory is None:
        path = name
        earlier = _already_loaded(name)
        if earlier is not None and os.path.realpath(earlier) in _explicit_paths and \
                os.path.dirname(os.path.realpath(earlier)) not in searched_dirs + _ld_path_dirs():
            # dlopen("libx.so") would return the copy this package loaded earlier from a
            # directory that is no longer searched (e.g. ACLNN_FAG_LIB_DIR changed + reset()).
            tried.append(Attempt(role, name, place.describe(), name, "not found",
                                 f"only the copy aclnn_fag loaded earlier from {earlier} is "
                                 "present, and that directory is no longer searched"))
            return None
    else:
        path = os.path.join(place.directory, name)
        if not os.path.exists(path):
            tried.append(Attempt(role, name, place.describe(), path, "not found",
                                 "no such file"))
            return None
    try:
        lib = ctypes.CDLL(path, mode=mode)
    except OSError as exc:
        text = str(exc)
        outcome = "failed to load"
        if place.directory is None and text.startswith(name + ":") and "No such file" in text:
            outcome = "not found"   # (a missing dependency names the dependency instead)
        tried.append(Attempt(role, name, place.describe(), path, outcome, text))
        return None
    if symbol is not None and not hasattr(lib, symbol):
        tried.append(Attempt(role, name, place.describe(), path, "missing symbol",
                             f"does not export {symbol}"))
        return None
    found = path
    if place.directory is None:
        found = _loaded_path(lib) or name
    else:
        _explicit_paths.add(os.path.realpath(path))
    tried.append(Attempt(role, name, place.describe(), found, "loaded"))
    return lib


def _ld_path_dirs() -> Tuple[str, ...]:
    return tuple(os.path.realpath(p) for p in os.environ.get("LD_LIBRARY_PATH", "").split(":") if p)


# realpaths of libraries this package dlopen'ed from an explicit directory
_explicit_paths: set = set()


class _LinkMap(ctypes.Structure):
    _fields_ = [("l_addr", ctypes.c_size_t), ("l_name", ctypes.c_char_p)]


_RTLD_DI_LINKMAP = 2
_dlinfo_fn = None


def _dlinfo():
    global _dlinfo_fn
    if _dlinfo_fn is None:
        fn = False
        for libname in (None, "libdl.so.2"):
            try:
                cand = ctypes.CDLL(libname).dlinfo
            except (OSError, AttributeError):
                continue
            cand.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p]
            cand.restype = ctypes.c_int
            fn = cand
            break
        _dlinfo_fn = fn
    return _dlinfo_fn or None


def _loaded_path(lib: ctypes.CDLL) -> Optional[str]:
    """The file behind a dlopen handle (dlinfo RTLD_DI_LINKMAP; else /proc/self/maps)."""
    fn = _dlinfo()
    if fn is not None:
        lm = ctypes.POINTER(_LinkMap)()
        if fn(lib._handle, _RTLD_DI_LINKMAP, ctypes.byref(lm)) == 0 and lm and lm.contents.l_name:
            return lm.contents.l_name.decode("utf-8", errors="replace")
    name = os.path.basename(getattr(lib, "_name", "") or "")
    try:
        with open("/proc/self/maps", "r", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                parts = line.split()
                if len(parts) >= 6 and os.path.basename(parts[5]) == name:
                    return parts[5]
    except OSError:
        pass
    return None


def _already_loaded(name: str) -> Optional[str]:
    """Path of an already loaded library that ``dlopen(name)`` would return, else None."""
    noload = getattr(os, "RTLD_NOLOAD", None)
    if noload is None:
        return None
    try:
        lib = ctypes.CDLL(name, mode=noload | ctypes.RTLD_LOCAL)
    except OSError:
        return None
    return _loaded_path(lib) or name


def load_libraries(environ: Optional[Mapping[str, str]] = None,
                   places: Optional[List[Place]] = None) -> Libraries:
    """Search and load the three roles (uncached). Raises LibraryNotFoundError listing every attempt."""
    notes: List[str] = []
    if places is None:
        places, notes = search_places(environ)
    tried: List[Attempt] = []
    handles: Dict[str, ctypes.CDLL] = {}
    paths: Dict[str, str] = {}
    searched = tuple(os.path.realpath(p.directory) for p in places if p.directory)
    missing: List[str] = []
    for role in ROLE_ORDER:
        names, mode, symbol = ROLES[role]
        lib = None
        for place in places:
            for name in names:
                lib = _try_load(role, name, place, mode, symbol, tried, searched)
                if lib is not None:
                    break
            if lib is not None:
                break
        if lib is None:
            missing.append(role)   # keep going: the report shows every role
            continue
        handles[role] = lib
        paths[role] = tried[-1].path
    if "opapi" in handles and not hasattr(handles["opapi"], PHASE2_SYMBOL):
        tried.append(Attempt("opapi", os.path.basename(paths["opapi"]), "", paths["opapi"],
                             "missing symbol", f"does not export {PHASE2_SYMBOL}"))
        missing.append("opapi")
    if missing:
        raise _not_found(missing, places, notes, tried)
    role, names, symbol = OPTIONAL_ROLE
    if not hasattr(handles["runtime"], symbol):
        for place in places:
            lib = _try_load(role, names[0], place, ctypes.RTLD_LOCAL, symbol, tried, searched)
            if lib is not None:
                handles[role] = lib
                paths[role] = tried[-1].path
                break
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
    err = LibraryNotFoundError("\n".join(lines))
    err.tried = list(tried)
    err.places = list(places)
    err.role = ", ".join(roles)
    return err


class _Cache:
    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.libs: Optional[Libraries] = None
        self.failure: Optional[LibraryNotFoundError] = None
        self.bindings = None
        self.generation = 0


_cache = _Cache()


def _copy_failure(err: LibraryNotFoundError) -> LibraryNotFoundError:
    new = LibraryNotFoundError(err.rule)
    for attr in ("tried", "places", "role"):
        setattr(new, attr, getattr(err, attr, None))
    return new


def libraries() -> Libraries:
    """The loaded libraries (loaded on first use, cached). Raises LibraryNotFoundError."""
    libs = _cache.libs
    if libs is not None:
        return libs
    with _cache.lock:
        if _cache.libs is None:
            if _cache.failure is not None:
                raise _copy_failure(_cache.failure)
            try:
                _cache.libs = load_libraries()
            except LibraryNotFoundError as exc:
                _cache.failure = exc
                raise _copy_failure(exc) from None
        return _cache.libs


def bindings():
    """The bound prototype table (:class:`.prototypes.Bindings`), cached with the libraries."""
    b = _cache.bindings
    if b is not None:
        return b
    with _cache.lock:
        if _cache.bindings is None:
            from .prototypes import bind
            libs = libraries()
            try:
                _cache.bindings = bind(libs)
            except LibraryNotFoundError as exc:
                _cache.failure = exc
                _cache.libs = None
                raise _copy_failure(exc) from None
        return _cache.bindings


def last_failure() -> Optional[LibraryNotFoundError]:
    """The cached load failure, if the last attempt failed."""
    return _cache.failure


def reset() -> None:
    """Forget the cached result (the next use searches again). Loaded libraries stay mapped."""
    with _cache.lock:
        _cache.libs = None
        _cache.failure = None
        _cache.bindings = None
        _cache.generation += 1
