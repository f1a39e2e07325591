"""Microseconds per refresh-grant round trip with python-requests, one requests.post per
request and no Session, as the LUSID Python SDK gets its tokens.

    python3 bench/roundtrip_requests.py URL N CLIENT_ID CLIENT_SECRET
Each request (post + .json()) is timed; prints the median."""
import statistics
import sys
import time

import requests

url, n, cid, secret = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
form = {"grant_type": "refresh_token", "refresh_token": "rt.x"}


def once():
    r = requests.post(url, data=form, auth=(cid, secret))
    r.raise_for_status()
    return r.json()["access_token"]


if len(once()) < 20:  # the first answer must carry a token
    sys.exit("roundtrip_requests: no token")
us = []
for _ in range(n):
    t0 = time.perf_counter()
    once()
    us.append((time.perf_counter() - t0) * 1e6)
print("RESULT roundtrip python-requests %.2f us" % statistics.median_low(us))
