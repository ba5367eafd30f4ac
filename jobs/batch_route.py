"""Ray job entrypoint: `ray job submit --working-dir . -- python jobs/batch_route.py --bundle ... --input ... --out ...`.

Same options as `ray-router route`; inside a job, Ray connects to the cluster it runs in.
"""

import sys

from ray_router.cli import main

if __name__ == "__main__":
    main(["route", *sys.argv[1:]], prog_name="jobs/batch_route.py")
