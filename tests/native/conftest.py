import os

# fuzz/property budgets: GATEWAYD_FUZZ_SCALE=20 for a long run
SCALE = float(os.environ.get("GATEWAYD_FUZZ_SCALE", "1"))
