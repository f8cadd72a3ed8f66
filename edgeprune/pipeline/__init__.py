"""The build pipeline: plain stage functions (stages.py), the policy that steers (policy.py), the loop that
orchestrates (loop.py) and atomic artifact writing (artifacts.py)."""
