"""Reading and describing models: the GGUF header reader (``reader``), ggml type sizes
(``ggml_types``), tensor-name classification (``tensors``), the per-layer model layout
(``model``), the catalog of known architectures (``catalog``) and a writer for test fixtures
(``writer``)."""
