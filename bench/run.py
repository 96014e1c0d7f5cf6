"""`make bench`: every benchmark, each reporting ratios against its reference measured in the same run."""

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent

if __name__ == "__main__":
    extra = sys.argv[1:]
    for script, args in (("loss_kernel.py", []), ("loss_kernel.py", ["--tokens", "4096", "--vocab", "128256"]),
                         ("method_overhead.py", extra), ("peer_trl.py", extra)):
        print(f"\n$ python bench/{script} {' '.join(args)}", flush=True)
        subprocess.run([sys.executable, str(HERE / script), *args], check=True)
