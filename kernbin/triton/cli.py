"""``kernbin triton compile``: Triton kernels ahead of time into a bundle (the parser lives here so that
``kernbin/cli.py`` needs one line to add it; nothing here imports Triton until the command runs).

    kernbin triton compile kernels.py:add_kernel --signature "*fp32:16, *fp32:16, *fp32:16, i32" \\
        --constexpr BLOCK=1024 --num-warps 4 -t cuda:sm_80 -t cuda:sm_90 -o model.kbin [--name add] [--add]
"""

from __future__ import annotations

import json
import os
import sys

__all__ = ["add_parser", "cmd_triton_compile"]


def _constexpr(text: str):
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        from ..errors import KernbinError
        raise KernbinError(f"--constexpr takes NAME=VALUE, not {text!r}")
    from ._meta import _constant
    v = _constant(value.strip())
    return name.strip(), value.strip() if v is None else v


def cmd_triton_compile(args) -> int:
    """Compile one kernel specialisation for every target into ``-o`` (added to it with ``--add``)."""
    from .aot import KernelSpec, compile_bundle
    consts = dict(_constexpr(c) for c in (args.constexpr or []))
    options = {}
    for o in args.option or []:
        k, sep, v = o.partition("=")
        if not sep or not k.strip():
            from ..errors import KernbinError
            raise KernbinError(f"--option takes KEY=VALUE, not {o!r}")
        try:
            options[k.strip()] = json.loads(v)          # numbers, true/false, null
        except ValueError:
            options[k.strip()] = v
    spec = KernelSpec(args.kernel, args.signature, consts, args.num_warps, args.num_stages, args.num_ctas, options,
                      args.name)
    add_to = args.output if args.add and os.path.exists(args.output) else None
    done = compile_bundle(args.output, [spec], args.target, jobs=args.jobs, add_to=add_to,
                          sign_key=args.sign)
    if args.json:
        print(json.dumps({"output": args.output, "kernels": done}, indent=2))
    else:
        for name, targets in done.items():
            print(f"{name}: {', '.join(targets)} -> {args.output}")
    return 0


def add_parser(sub) -> None:
    """Add ``triton compile`` to the ``kernbin`` command's subparsers."""
    s = sub.add_parser("triton", help="Triton kernels ahead of time into a bundle (launch without Triton)",
                       description="Triton integration: compile Triton JIT kernels into kernbin bundles. "
                                   "Deploy with kernbin.triton.load(bundle), which never imports Triton.")
    tsub = s.add_subparsers(dest="triton_command", metavar="ACTION")
    tsub.required = True
    c = tsub.add_parser("compile", help="compile a Triton kernel specialisation for CUDA targets into a bundle",
                        description="Compile FILE.py:KERNEL (or package.module:KERNEL) for each -t target "
                                    "(cuda:sm_80, cuda:sm_90, cuda:sm_80,sm_90, cuda:N) with Triton (no GPU "
                                    "needed) into the bundle -o, one entry per SM, named NAME.sm_XY.")
    c.add_argument("kernel", help="path/to/file.py:kernel_name or package.module:kernel_name")
    c.add_argument("--signature", "-s", required=True,
                   help='types in argument order, Triton AOT style: "*fp32:16, *fp32:16, i32, 1024" '
                        "(:16 divisible by 16, :1 fixed at 1, a value: a constexpr)")
    c.add_argument("--constexpr", "-c", action="append", metavar="NAME=VALUE", help="a constexpr value (repeatable)")
    c.add_argument("--target", "-t", action="append", required=True, help="cuda:sm_XY (repeatable)")
    c.add_argument("--output", "-o", required=True, help="the bundle to write")
    c.add_argument("--name", help="bundle name of the kernel (default: function name + specialisation hash)")
    c.add_argument("--num-warps", "-w", type=int, default=4)
    c.add_argument("--num-stages", type=int, default=3)
    c.add_argument("--num-ctas", type=int, default=1)
    c.add_argument("--option", action="append", metavar="KEY=VALUE", help="another Triton option (repeatable)")
    c.add_argument("--add", action="store_true", help="add to the bundle -o if it exists (same name: replaced)")
    c.add_argument("--sign", metavar="KEY", help="sign the bundle with this private key")
    from ..cli import positive_int
    c.add_argument("--jobs", "-j", type=positive_int, default=None, help="worker processes (default: one per core)")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_triton_compile)


if __name__ == "__main__":            # python -m kernbin.triton.cli ... (the same as `kernbin triton ...`)
    import argparse
    p = argparse.ArgumentParser(prog="kernbin")
    p.add_argument("--debug", action="store_true")
    add_parser(p.add_subparsers(dest="command"))
    a = p.parse_args()
    sys.exit(a.func(a))
