#!/usr/bin/python3
"""Load client for spec/nginx/nginx_spec.lua: concurrent requests against the test
nginx on 127.0.0.1, one connection per request (so the kernel spreads them
over every worker), and independent verification with python3-jwcrypto.

usage:
  client.py tokens PORT PATH COUNT THREADS LIFETIME
      POSTs COUNT claims objects {"sub": "user-<i>", "i": <i>} to PATH, then
      GETs /.well-known/jwks.json and verifies every token with jwcrypto
      against it (signature, kid, and the claims: i, sub, exp - iat);
      reports the statuses, the 503s without Retry-After and the slowest
      request of each status, in seconds.
  jwks PORT COUNT THREADS
      GETs the JWK Set COUNT times and reports the distinct bodies and ETags
      per worker.
  wait PORT PATH TIMEOUT
      polls PATH until it answers 200.
  requests PORT < list.json
      runs the requests listed on stdin ([{method, path, headers, body}]).
  rotation PORT PATH SECONDS
      for SECONDS, one request after another: POSTs claims to PATH and
      verifies each token against a JWK Set it caches exactly as
      Cache-Control says (revalidating with If-None-Match when max-age
      runs out, never refetching on an unknown kid); between tokens it
      probes the JWK Set uncached, to record what each worker serves.
  verify PORT < tokens.json
      verifies each token of the list on stdin against the JWK Set served now.
Prints one JSON object on stdout.
"""
import base64
import hashlib
import http.client
import json
import sys
import threading
import time
from collections import Counter

from jwcrypto import jwk, jws

WORKER_HEADER = "X-Jwke-Worker"


def request(port, method, path, body=None, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        h = {"Connection": "close"}
        h.update(headers or {})
        conn.request(method, path, body=body, headers=h)
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, dict((k.lower(), v) for k, v in resp.getheaders()), data
    finally:
        conn.close()


def run_parallel(count, threads, work):
    """Calls work(i) for i in range(count) on `threads` threads; returns results by i."""
    results = [None] * count
    next_index = [0]
    lock = threading.Lock()

    def loop():
        while True:
            with lock:
                i = next_index[0]
                next_index[0] += 1
            if i >= count:
                return
            try:
                results[i] = work(i)
            except Exception as e:  # a transport error is a result too
                results[i] = {"status": 0, "error": repr(e)}

    ts = [threading.Thread(target=loop) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return results


def tokens(port, path, count, threads, lifetime):
    def work(i):
        body = json.dumps({"sub": "user-%d" % i, "i": i}).encode()
        sent = time.time()
        status, headers, data = request(port, "POST", path, body, {"Content-Type": "application/json"})
        return {"status": status, "worker": headers.get(WORKER_HEADER.lower()),
                "type": headers.get("content-type"), "token": data.decode("utf-8", "replace"),
                "retry_after": headers.get("retry-after"), "seconds": time.time() - sent}

    started = time.time()
    results = run_parallel(count, threads, work)
    elapsed = time.time() - started

    status, _, jwks_body = request(port, "GET", "/.well-known/jwks.json")
    keys = jwk.JWKSet.from_json(jwks_body.decode())
    by_kid = {k.get("kid"): k for k in keys}
    valid, problems, algs = 0, [], Counter()
    for i, r in enumerate(results):
        if r["status"] != 200:
            problems.append("request %d: status %s %s" % (i, r["status"], r.get("error") or r.get("token", "")[:200]))
            continue
        if r["type"] != "application/jwt":
            problems.append("request %d: content type %s" % (i, r["type"]))
            continue
        try:
            obj = jws.JWS()
            obj.deserialize(r["token"])
            header = obj.jose_header
            key = by_kid.get(header.get("kid"))
            if key is None:
                raise ValueError("kid %r is not in the served JWK Set" % header.get("kid"))
            obj.verify(key, alg=header.get("alg"))
            claims = json.loads(obj.payload)
            if claims.get("i") != i or claims.get("sub") != "user-%d" % i:
                raise ValueError("claims of another request: %r" % claims)
            if claims.get("exp", 0) - claims.get("iat", 0) != lifetime:
                raise ValueError("exp - iat is not %d: %r" % (lifetime, claims))
            if header.get("typ") != "JWT":
                raise ValueError("typ is %r" % header.get("typ"))
            algs[header.get("alg")] += 1
            valid += 1
        except Exception as e:
            problems.append("request %d: %s" % (i, e))
    return {
        "count": count,
        "valid": valid,
        "problems": problems[:10],
        "problem_count": len(problems),
        "statuses": dict(Counter(str(r["status"]) for r in results)),
        "retry_after_missing": sum(1 for r in results if r["status"] == 503 and not r.get("retry_after")),
        "slowest": {str(s): round(max(r.get("seconds", 0) for r in results if r["status"] == s), 3)
                    for s in set(r["status"] for r in results)},
        "workers": sorted(set(r["worker"] for r in results if r.get("worker"))),
        "algs": dict(algs),
        "jwks_status": status,
        "seconds": round(elapsed, 3),
    }


def jwks(port, count, threads):
    def work(i):
        status, headers, data = request(port, "GET", "/.well-known/jwks.json")
        return {"status": status, "worker": headers.get(WORKER_HEADER.lower()),
                "etag": headers.get("etag"), "body": hashlib.sha256(data).hexdigest()}

    results = run_parallel(count, threads, work)
    per_worker = {}
    for r in results:
        if r.get("worker"):
            entry = per_worker.setdefault(r["worker"], {"bodies": set(), "etags": set()})
            entry["bodies"].add(r["body"])
            entry["etags"].add(r["etag"])
    return {
        "count": count,
        "statuses": dict(Counter(str(r["status"]) for r in results)),
        "workers": sorted(per_worker),
        "bodies": sorted(set(r["body"] for r in results if r["status"] == 200)),
        "etags": sorted(set(r["etag"] for r in results if r["status"] == 200)),
        "per_worker": {w: {"bodies": len(e["bodies"]), "etags": len(e["etags"])} for w, e in per_worker.items()},
    }


def verify_token(token, by_kid):
    """Verifies a compact JWS against a kid -> jwk.JWK map; returns its
    header, or raises."""
    obj = jws.JWS()
    obj.deserialize(token)
    header = obj.jose_header
    key = by_kid.get(header.get("kid"))
    if key is None:
        raise ValueError("kid %r is not in the cached JWK Set" % header.get("kid"))
    obj.verify(key, alg=header.get("alg"))
    return header


def parse_jwks(body):
    return {k.get("kid"): k for k in jwk.JWKSet.from_json(body.decode())}


def max_age_of(headers):
    for part in headers.get("cache-control", "").split(","):
        name, _, value = part.strip().partition("=")
        if name == "max-age":
            return int(value)
    return 0


class CachingClient:
    """A relying party that caches the JWK Set as HTTP caching says: fresh
    for max-age seconds from the request, then revalidated with its ETag."""

    def __init__(self, port):
        self.port, self.keys, self.etag, self.expires, self.fetches = port, None, None, 0, []

    def jwks(self):
        now = time.time()
        if self.keys is not None and now < self.expires:
            return self.keys
        headers = {"If-None-Match": self.etag} if self.etag else {}
        status, h, data = request(self.port, "GET", "/.well-known/jwks.json", None, headers)
        if status == 200:
            self.keys, self.etag = parse_jwks(data), h.get("etag")
        elif status != 304:
            raise ValueError("JWK Set status %d" % status)
        self.expires = now + max_age_of(h)
        self.fetches.append({"at": now, "status": status, "max_age": max_age_of(h)})
        return self.keys


def rotation(port, path, seconds):
    client = CachingClient(port)
    tokens, probes = [], []
    deadline = time.time() + seconds
    i = 0
    while time.time() < deadline:
        i += 1
        sent = time.time()
        body = json.dumps({"sub": "user-%d" % i, "i": i}).encode()
        status, headers, data = request(port, "POST", path, body, {"Content-Type": "application/json"})
        received = time.time()
        entry = {"sent": sent, "received": received, "status": status, "worker": headers.get(WORKER_HEADER.lower())}
        try:
            if status != 200:
                raise ValueError("status %d: %s" % (status, data[:200]))
            header = verify_token(data.decode(), client.jwks())
            entry["kid"], entry["ok"] = header.get("kid"), True
        except Exception as e:
            entry["ok"], entry["error"] = False, str(e)
        tokens.append(entry)
        sent = time.time()
        status, headers, data = request(port, "GET", "/.well-known/jwks.json")
        probes.append({"sent": sent, "received": time.time(), "status": status,
                       "worker": headers.get(WORKER_HEADER.lower()), "etag": headers.get("etag"),
                       "max_age": max_age_of(headers),
                       "kids": sorted(parse_jwks(data)) if status == 200 else []})
        time.sleep(0.02)
    return {"tokens": tokens, "probes": probes, "fetches": client.fetches}


def verify_list(port):
    status, _, data = request(port, "GET", "/.well-known/jwks.json")
    by_kid = parse_jwks(data)
    out = []
    for token in json.load(sys.stdin):
        try:
            out.append({"ok": True, "kid": verify_token(token, by_kid).get("kid")})
        except Exception as e:
            out.append({"ok": False, "error": str(e)})
    return {"status": status, "kids": sorted(by_kid), "results": out}


def wait(port, path, timeout):
    """Polls path until it answers 200; returns the last status."""
    deadline = time.time() + timeout
    status, error = 0, None
    while time.time() < deadline:
        try:
            status, _, _ = request(port, "GET", path)
            if status == 200:
                break
        except Exception as e:
            error = repr(e)
        time.sleep(0.1)
    return {"status": status, "error": error}


def requests_from_stdin(port):
    """Runs the requests listed on stdin (a JSON list of {method, path,
    headers, body or body_base64url (bytes that are not UTF-8)}) one by
    one; returns status, headers and body of each."""
    out = []
    for r in json.load(sys.stdin):
        body = r.get("body").encode() if r.get("body") is not None else None
        if r.get("body_base64url") is not None:
            encoded = r["body_base64url"]
            body = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
        status, headers, data = request(port, r.get("method", "GET"), r["path"], body, r.get("headers"))
        out.append({"status": status, "headers": headers, "body": data.decode("utf-8", "replace")})
    return out


def main():
    mode = sys.argv[1]
    if mode == "wait":
        out = wait(int(sys.argv[2]), sys.argv[3], float(sys.argv[4]))
    elif mode == "requests":
        out = requests_from_stdin(int(sys.argv[2]))
    elif mode == "tokens":
        out = tokens(int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]))
    elif mode == "rotation":
        out = rotation(int(sys.argv[2]), sys.argv[3], float(sys.argv[4]))
    elif mode == "verify":
        out = verify_list(int(sys.argv[2]))
    elif mode == "jwks":
        out = jwks(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
    else:
        raise SystemExit("unknown mode " + mode)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
