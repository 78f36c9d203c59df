"""`evolve export` and `evolve compare`: winning kernels as self-contained modules for training code.

`write_export(run_folder, candidate_id, out_path, allow_modelled=False)` writes a module that imports
only torch and triton: the candidate kernel, the runtime of kernels/runtime/ (custom op with autograd,
dispatch with explain(), nn.Linear patching, the interpreter's bf16 fixes) and a provenance header;
the kernel is judged first on the backward products of the training shapes (backward.py), and
autograd runs it only where that verdict allows.
`write_portfolio` writes the best kernel per shape bucket behind one dispatcher; `compare` tables
kernels against torch.matmul and the seed. The CLI's subcommands: add_export_parser / main_export,
add_compare_parser / main_compare.
"""

from .command import add_export_parser, main_export, write_export, write_portfolio
from .compare import add_compare_parser, compare, main_compare
from .facts import Facts, verdict_facts

__all__ = [
    "Facts",
    "add_compare_parser",
    "add_export_parser",
    "compare",
    "main_compare",
    "main_export",
    "verdict_facts",
    "write_export",
    "write_portfolio",
]
