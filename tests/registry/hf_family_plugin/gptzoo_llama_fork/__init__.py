"""A third-party plugin that adds a Hugging Face family: ``llama_fork``, a checkpoint stored in
Llama's layout under a model_type of its own (as a fork of Llama would publish), made from
gptzoo's Llama rows."""

from dataclasses import replace

from gptzoo.recipes.interop.hf.families.llama import LLAMA
from gptzoo.registry.hookspecs import hookimpl

LLAMA_FORK = replace(LLAMA, model_type="llama_fork", architecture="LlamaForkForCausalLM")


@hookimpl
def register_hf_families(register):
    register(LLAMA_FORK)
