"""`tinyexaone ARGS` on a slow machine: every forward pass, and every tensor a conversion writes,
waits SECONDS first, so a test's signal can land in the middle of a reply or a conversion
whatever the real speed. A test tool: the runtime itself has no such hook.

    python tests/slow_cli.py SECONDS ARGS...
"""

import sys
import time

from tinyexaone.cli.main import main
from tinyexaone.model import Model
from tinyexaone.quant import convert


def slowed(function, seconds: float):
    def wrapper(*args, **kwargs):
        time.sleep(seconds)
        return function(*args, **kwargs)
    return wrapper


if __name__ == "__main__":
    delay = float(sys.argv[1])
    Model.forward = slowed(Model.forward, delay)
    convert._convert_tensor = slowed(convert._convert_tensor, delay)
    main(sys.argv[2:])
