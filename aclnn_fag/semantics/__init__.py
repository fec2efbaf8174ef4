"""The op's semantics as plain data: sequence lengths, kept sets, softmax-stat layout."""
