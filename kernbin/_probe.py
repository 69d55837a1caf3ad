"""Child process of ``kernbin.check(..., isolate=True)``: load ``.knb`` bytes from stdin on the
target in argv[1] and print the runtime's verdict as one JSON line. If the runtime crashes on the
bytes, only this process dies; the parent reports ``verdict="driver", rule="crash"``."""

import json
import sys


def main() -> int:
    from . import api
    data = sys.stdin.buffer.read()
    device = api.open_device(sys.argv[1])
    native = api.read_native(data)
    payload, _ = api._gate(device, native)
    print(json.dumps(api._probe(device, native, payload)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
