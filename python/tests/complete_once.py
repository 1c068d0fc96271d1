"""One greedy completion in llama-cpp-python, for runs under a memory limit
(tests/python_llama_cpp.rs): ``python complete_once.py MODEL N_CTX``. With ``DCGGUF_HOOK=1``
it imports ``dcgguf.llama_cpp`` first (DC-GGUF files load; plain ones as before). Prints the
completion's text; llama.cpp's and dcgguf's log go to stderr."""

import os
import sys

if os.environ.get("DCGGUF_HOOK") == "1":
    import dcgguf.llama_cpp  # noqa: F401

from llama_cpp import Llama

PROMPT = (
    "Memory limits on shared machines count every page that a process touches, including "
    "the page cache holding the files it reads. Explain in one paragraph why this matters "
    "when running language models:"
)

llm = Llama(model_path=sys.argv[1], n_ctx=int(sys.argv[2]), n_threads=2, seed=1, verbose=True)
out = llm.create_completion(PROMPT, max_tokens=16, temperature=0.0)
print(out["choices"][0]["text"])
llm.close()
