"""Ray job entrypoint: `ray job submit --working-dir . -- python jobs/evaluate.py --bundle ... --out ...`.

Same options as `ray-router evaluate`; inside a job, Ray connects to the cluster it runs in.
"""

import sys

from ray_router.cli import main

if __name__ == "__main__":
    main(["evaluate", *sys.argv[1:]], prog_name="jobs/evaluate.py")
