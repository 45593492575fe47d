"""``gptzoo new-plugin``: a plugin distribution that already passes the conformance kit.

It writes a package with one module (the component, its params and the registering hook), an
entry point in the ``gptzoo`` group and a test that runs the kit, so an author starts from
working code and edits the forward.
"""

from __future__ import annotations

import re
from pathlib import Path

from gptzoo.core import GptzooError
from gptzoo.recipes.runs.files import check_out_folder
from gptzoo.registry import default_registry

PYPROJECT = """[build-system]
requires = ["setuptools>=77"]
build-backend = "setuptools.build_meta"

[project]
name = "{dist}"
version = "0.1.0"
description = "A gptzoo {family} plugin: {name}"
requires-python = ">=3.11"
dependencies = ["gptzoo"]

[project.optional-dependencies]
test = ["pytest>=8"]

# gptzoo finds installed plugins through this entry-point group.
[project.entry-points.gptzoo]
{module} = "{module}"

[tool.setuptools]
py-modules = ["{module}"]
"""

TEST = """from gptzoo.registry import make_registry
from gptzoo.testing import check_component

import {module}


def test_{name}_conforms():
    # Built-ins plus this module, whether or not the package is installed.
    registry = make_registry(entry_points=False)
    registry.register_plugin({module})
    check_component("{family}", "{name}", registry=registry)
"""

README = """# {dist}

A gptzoo {family} plugin. Use it in a config as `{family} = {{ name = "{name}" }}` after
`pip install -e .`; `gptzoo plugins` lists it. Test it with `pip install -e '.[test]' && pytest`:
the test runs gptzoo's conformance kit on it.
"""

HEADER = '''"""{doc}"""

import math

import torch
from torch import Tensor, nn

from gptzoo.core import {imports}
from gptzoo.registry import hookimpl

'''

BODIES = {
    "norm": (
        "ScaleNorm: g · x / ‖x‖ with one learned scalar g starting at √d (Nguyen & Salazar, 2019).",
        "Norm",
        """
class {cls}Params(Params):
    eps: float = 1e-5


class {cls}(Norm):
    Params = {cls}Params

    def __init__(self, params: {cls}Params, dims: Dims):
        super().__init__(params, dims)
        self.scale = nn.Parameter(torch.tensor(math.sqrt(dims.d_model)))

    def forward(self, x: Tensor) -> Tensor:  # (B, T, C) -> (B, T, C)
        return self.scale * x / x.norm(dim=-1, keepdim=True).clamp(min=self.params.eps)
""",
    ),
    "feed_forward": (
        "The squared-ReLU MLP of Primer (So et al., 2021): relu(x W_in)² W_out.",
        "FeedForward",
        """
class {cls}Params(Params):
    hidden: int | None = None  # None: 4 × d_model
    bias: bool = True


class {cls}(FeedForward):
    Params = {cls}Params

    def __init__(self, params: {cls}Params, dims: Dims):
        super().__init__(params, dims)
        hidden = params.hidden or 4 * dims.d_model
        self.in_proj = nn.Linear(dims.d_model, hidden, bias=params.bias)
        self.out_proj = nn.Linear(hidden, dims.d_model, bias=params.bias)  # writes to the residual stream

    def forward(self, x: Tensor) -> Tensor:
        return self.out_proj(torch.relu(self.in_proj(x)).square())  # (B, T, C) -> (B, T, hidden) -> (B, T, C)
""",
    ),
    "attention": (
        "Causal attention whose heads each learn a temperature: softmax(q·kᵀ / (√hs · τ_h)) v.",
        "Attention",
        """
class {cls}(Attention):
    def __init__(self, params: Params, dims: Dims):
        super().__init__(params, dims)
        nh, nkv, hs = dims.n_heads, dims.n_kv_heads, dims.head_size
        self.qkv = nn.Linear(dims.d_model, (nh + 2 * nkv) * hs, bias=dims.qkv_bias)
        self.out_proj = nn.Linear(nh * hs, dims.d_model, bias=dims.attn_out_bias)
        self.log_temperature = nn.Parameter(torch.zeros(nh, 1, 1))
        self.attn_dropout = nn.Dropout(dims.dropout)

    def forward(self, x: Tensor, ctx: AttentionContext, cache: LayerCache | None = None) -> Tensor:
        B, T, _ = x.shape
        nh, nkv, hs = self.dims.n_heads, self.dims.n_kv_heads, self.dims.head_size
        q, k, v = self.qkv(x).split([nh * hs, nkv * hs, nkv * hs], dim=-1)
        q = q.view(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, nkv, hs).transpose(1, 2)  # (B, nkv, T, hs)
        v = v.view(B, T, nkv, hs).transpose(1, 2)  # (B, nkv, T, hs)
        q, k = ctx.rotate(q, k)
        if cache is not None:
            k, v = cache.update(k, v, ctx.offset)  # (B, nkv, Tk, hs): cached and new
        k, v = k.repeat_interleave(nh // nkv, dim=1), v.repeat_interleave(nh // nkv, dim=1)  # (B, nh, Tk, hs)
        scores = q @ k.transpose(-2, -1) / (math.sqrt(hs) * self.log_temperature.exp())  # (B, nh, T, Tk)
        bias = ctx.bias(scores.dtype)  # causal and padding mask, plus the position scheme's bias
        if bias is not None:
            scores = scores + bias
        weights = torch.softmax(scores, dim=-1)  # (B, nh, T, Tk)
        ctx.record(weights)  # what `gptzoo inspect` draws (nothing happens unless it is inspecting)
        y = self.attn_dropout(weights) @ v  # (B, nh, T, hs)
        return self.out_proj(y.transpose(1, 2).reshape(B, T, nh * hs))  # (B, T, C)
""",
    ),
    "positional": (
        "A distance penalty on the attention scores with one slope for every head (ALiBi with a single slope).",
        "PositionalEncoding",
        """
class {cls}Params(Params):
    slope: float = 0.1


class {cls}(PositionalEncoding):
    Params = {cls}Params

    def score_bias(self, q_positions: Tensor, k_positions: Tensor) -> Tensor:
        distance = (q_positions[:, :, None] - k_positions[:, None, :]).float()  # (B|1, T, Tk)
        return (-self.params.slope * distance).unsqueeze(1)  # (B|1, 1, T, Tk)
""",
    ),
    "block": (
        "A pre-norm block whose residual branches are scaled by learned per-channel gates (LayerScale, Touvron et al., 2021).",
        "Block",
        """
class {cls}Params(Params):
    init_scale: float = 0.1


class {cls}(Block):
    Params = {cls}Params

    def __init__(self, params: {cls}Params, dims: Dims, layer: LayerSpec):
        super().__init__(params, dims, layer)
        self.attn_norm = layer.norm.build(dims)
        self.attention = layer.attention.build(dims)
        self.ffn_norm = layer.norm.build(dims)
        self.feed_forward = layer.feed_forward.build(dims)
        self.attn_scale = nn.Parameter(torch.full((dims.d_model,), params.init_scale))
        self.ffn_scale = nn.Parameter(torch.full((dims.d_model,), params.init_scale))

    def forward(self, x: Tensor, ctx: AttentionContext, cache: LayerCache | None = None) -> Tensor:  # (B, T, C)
        x = x + self.attn_scale * self.attention(self.attn_norm(x), ctx, cache)
        return x + self.ffn_scale * self.feed_forward(self.ffn_norm(x))
""",
    ),
}
FAMILIES = tuple(BODIES)


def new_plugin(name: str, family: str, out: str | Path) -> list[Path]:
    """Write the package for component ``name`` of ``family`` into ``out``; returns the files written."""
    if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
        raise GptzooError(
            f"plugin name {name!r}: use lower-case letters, digits and underscores, starting with a letter (it names the module and the component)"
        )
    if family not in BODIES:
        raise GptzooError(f"--family {family!r}: choose one of {', '.join(FAMILIES)}")
    taken = default_registry().names(family)
    if name in taken:
        raise GptzooError(
            f"plugin name {name!r}: an installed plugin already provides the {family} {name!r} ({', '.join(taken)} are taken); choose another name"
        )
    out = Path(out)
    check_out_folder(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise GptzooError(f"{out}: exists and is not an empty folder; choose a new --out")
    module, dist, cls = (
        f"gptzoo_{name}",
        f"gptzoo-{name.replace('_', '-')}",
        "".join(p.title() for p in name.split("_")),
    )
    doc, interface, body = BODIES[family]
    imports = {
        "Norm": "Dims, Norm, Params",
        "FeedForward": "Dims, FeedForward, Params",
        "Attention": "Attention, AttentionContext, Dims, LayerCache, Params",
        "PositionalEncoding": "Params, PositionalEncoding",
        "Block": "AttentionContext, Block, Dims, LayerCache, LayerSpec, Params",
    }[interface]
    code = (
        HEADER.format(doc=doc, imports=imports)
        + body.format(cls=cls)
        + f'''

@hookimpl
def register_components(register):
    register("{family}", "{name}", {cls})
'''
    )
    if "math." not in body:
        code = code.replace("import math\n\n", "")
    files = {
        out / "pyproject.toml": PYPROJECT.format(dist=dist, family=family, name=name, module=module),
        out / f"{module}.py": code,
        out / "tests" / f"test_{name}.py": TEST.format(module=module, family=family, name=name),
        out / "README.md": README.format(dist=dist, family=family, name=name),
    }
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return list(files)
