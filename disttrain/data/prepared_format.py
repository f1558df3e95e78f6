"""The name and versions of the prepared-data layout (`meta.json` "format" and "version"), in a module of its own so
that the writers (`disttrain data prepare`, `disttrain data criteo`) do not import the reader (and torch)."""

FORMAT = "disttrain-criteo"  # meta.json "format" of a directory `disttrain data criteo` / `data prepare` writes
FORMAT_VERSION = 1  # `disttrain data criteo`
VERSIONS = (1, 2)  # 2: `disttrain data prepare` (names, multi-hot features, 64-bit vocabularies)
