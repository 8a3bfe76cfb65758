"""`qrtrain deploy`: verified versions served by real inference engines (deploy.py), the checks before
traffic (equivalence.py), the engines' command lines (engines.py) and the deployments' records (records.py)."""
