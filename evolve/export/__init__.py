"""`evolve export`: a winning kernel as one self-contained module for training code.

`write_export(run_folder, candidate_id, out_path, allow_modelled=False)` writes a module that imports
only torch and triton: the candidate kernel, the runtime of kernels/runtime/ (custom op with autograd,
dispatch with explain(), nn.Linear patching, the interpreter's bf16 fix) and a provenance header.
`add_export_parser` / `main_export` are the CLI's subcommand.
"""

from .command import add_export_parser, main_export, write_export, write_portfolio
from .facts import Facts, verdict_facts

__all__ = ["Facts", "add_export_parser", "main_export", "verdict_facts", "write_export", "write_portfolio"]
