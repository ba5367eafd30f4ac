"""Ray job entrypoint: `ray job submit --working-dir . -- python jobs/train.py --data ... --out ...`.

Same options as `ray-router train`; inside a job, Ray connects to the cluster it runs in.
"""

import sys

from ray_router.cli import main

if __name__ == "__main__":
    main(["train", *sys.argv[1:]], prog_name="jobs/train.py")
