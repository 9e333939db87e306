"""Reading GGUF headers over HTTP Range requests and listing Hugging Face repositories."""
