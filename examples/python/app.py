#!/usr/bin/env python3
"""A small ledger kept alive by `restartpoint sidecar` (Python 3 standard library only).

The sidecar starts this app when its node becomes primary, with these variables set:

  RESTARTPOINT_SIDECAR_URL   http://127.0.0.1:<port> of the sidecar's API
  RESTARTPOINT_TOKEN_FILE    the file holding the API's bearer token
  RESTARTPOINT_RESUMED_FROM  the checkpoint the state was restored from (0 on a fresh app)

On start it reads its state with GET /state (a fresh app gets `initialState` from the config;
after a takeover, the state of the last checkpoint). Each step writes one account to the store,
sometimes deletes one, updates `state["mirror"]` (what the store must hold) and declares a
restart point: all of it in one POST /batch, whose checkpoint is a JSON merge patch of what the
step changed in the state (the sidecar applies it to its copy and ships only that change). All
requests go over one kept-alive connection. It prints one JSON line per event on
stdout: {"ev":"resumed",...} once, then {"ev":"step","checkpoint":n,...} per acknowledged step.
At "resumed" it also prints digests of its mirror and of the store as read back through the
API: after a takeover they must be equal (store and image agree).

Environment knobs: LEDGER_INTERVAL_MS (pause between steps, default 100), LEDGER_STEPS (stop
after this many steps in this run and exit 0; default 0 = run until stopped).
"""

import hashlib
import http.client
import json
import os
import signal
import sys
import time
import urllib.parse

ACCOUNTS = 7  # keys acct-0 .. acct-6: a known set, so the store can be read back whole

URL = os.environ.get("RESTARTPOINT_SIDECAR_URL")
TOKEN_FILE = os.environ.get("RESTARTPOINT_TOKEN_FILE")
if not URL or not TOKEN_FILE:
    sys.exit("app.py runs under `restartpoint sidecar`: RESTARTPOINT_SIDECAR_URL and RESTARTPOINT_TOKEN_FILE must be set")
with open(TOKEN_FILE, encoding="utf-8") as f:
    TOKEN = f.read().strip()

stopping = False


def on_term(_signum, _frame):
    """SIGTERM from the sidecar (demoted or stopping), or Ctrl-C in the terminal (SIGINT reaches
    the sidecar and its app together): finish the current step, then exit 0."""
    global stopping
    stopping = True


signal.signal(signal.SIGTERM, on_term)
signal.signal(signal.SIGINT, on_term)


def emit(**ev):
    print(json.dumps({"t": int(time.time() * 1000), "pid": os.getpid(), **ev}), flush=True)


class ApiError(Exception):
    def __init__(self, status, code, message):
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code = status, code


_target = urllib.parse.urlsplit(URL)
_conn = None


def call(method, path, body=None, content_type=None):
    """One API call over a kept-alive connection: returns (status, headers, body bytes); raises
    ApiError for an error answer. Every call here is idempotent, so a connection the sidecar
    closed (idle timeout) is reopened and the call sent again once."""
    global _conn
    headers = {"Authorization": f"Bearer {TOKEN}"}
    if content_type:
        headers["Content-Type"] = content_type
    for attempt in (1, 2):
        if _conn is None:
            _conn = http.client.HTTPConnection(_target.hostname, _target.port, timeout=30)
        try:
            _conn.request(method, path, body=body, headers=headers)
            res = _conn.getresponse()
            raw = res.read()
            break
        except (http.client.RemoteDisconnected, ConnectionError, http.client.CannotSendRequest):
            _conn.close()
            _conn = None
            if attempt == 2:
                raise
    if res.status >= 400:
        try:
            err = json.loads(raw)["error"]
            raise ApiError(res.status, err["code"], err["message"])
        except (ValueError, KeyError):
            raise ApiError(res.status, "HTTP", raw.decode("utf-8", "replace")) from None
    return res.status, res.headers, raw


def store_path(key):
    return "/store/" + urllib.parse.quote(key, safe="")


def store_get(key):
    try:
        return call("GET", store_path(key))[2].decode("utf-8")
    except ApiError as e:
        if e.status == 404:
            return None
        raise


def digest(entries):
    """sha256 over the (key, value) pairs in key order: the same for the mirror and the store."""
    h = hashlib.sha256()
    for k in sorted(entries):
        h.update(f"{k}\0{entries[k]}\1".encode("utf-8"))
    return h.hexdigest()


def batch(writes, patch):
    """POST /batch until acknowledged: the writes, then a checkpoint of the state changed by
    `patch` (a JSON merge patch: null deletes a key). A REPLICATION answer is retryable; sending
    the same batch again is harmless (the same values, the same patch)."""
    body = json.dumps({"writes": writes, "checkpoint": {"patch": patch}}).encode("utf-8")
    for attempt in range(1, 100):
        try:
            return json.loads(call("POST", "/batch", body, "application/json")[2])["checkpoint"]
        except ApiError as e:
            if e.code != "REPLICATION":
                raise
            emit(ev="retry", attempt=attempt, error=str(e))
            time.sleep(min(2.0, 0.1 * attempt))
    raise RuntimeError("checkpoint not acknowledged after 99 attempts")


def step(state):
    """One step: write an account (sometimes close one), update the state, checkpoint it, in
    one request. Only what changed goes in the checkpoint's patch."""
    n = state["steps"] + 1
    key = f"acct-{n % ACCOUNTS}"
    amount = (n * 37) % 101
    value = f"{n}:{amount}"
    writes = [{"key": key, "text": value}]
    mirror = {key: value}
    state["mirror"][key] = value
    if n % 5 == 0:  # now and then an account is closed
        gone = f"acct-{(n + 3) % ACCOUNTS}"
        writes.append({"op": "delete", "key": gone})
        mirror[gone] = None
        state["mirror"].pop(gone, None)
    state["steps"] = n
    state["total"] += amount
    return batch(writes, {"steps": n, "total": state["total"], "mirror": mirror})


def main():
    interval = int(os.environ.get("LEDGER_INTERVAL_MS", "100")) / 1000
    max_steps = int(os.environ.get("LEDGER_STEPS", "0"))

    _, headers, raw = call("GET", "/state")
    state = json.loads(raw) or {}
    state.setdefault("steps", 0)
    state.setdefault("total", 0)
    state.setdefault("mirror", {})
    store = {}
    for i in range(ACCOUNTS):
        v = store_get(f"acct-{i}")
        if v is not None:
            store[f"acct-{i}"] = v
    emit(
        ev="resumed",
        checkpoint=int(headers.get("Restartpoint-Resumed-From", "0")),
        epoch=int(headers.get("Restartpoint-Epoch", "0")),
        steps=state["steps"],
        mirrorDigest=digest(state["mirror"]),
        storeDigest=digest(store),
    )

    done = 0
    while not stopping and (max_steps == 0 or done < max_steps):
        try:
            ack = step(state)
        except ApiError as e:
            if e.code in ("FENCED", "NOT_PRIMARY"):
                # This node lost the lease: stop work. The sidecar stops this app and rejoins as
                # a standby; the new primary's app resumes from the last acknowledged checkpoint.
                emit(ev="fenced", error=str(e))
                return 0
            raise
        done += 1
        emit(
            ev="step",
            checkpoint=ack["checkpoint"],
            epoch=ack["epoch"],
            steps=state["steps"],
            mirrorDigest=digest(state["mirror"]),
        )
        time.sleep(interval)
    emit(ev="stopped", steps=state["steps"])
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (OSError, http.client.HTTPException) as e:
        # The sidecar is gone (killed, or its host is going down): nothing here can be saved.
        # One line, no traceback; a standby's sidecar takes over and starts the app there.
        # (ConnectionError and TimeoutError are OSErrors.)
        reason = getattr(e, "strerror", None) or e
        print(f"app.py: the sidecar's API at {URL} does not answer ({reason}): stopping", file=sys.stderr, flush=True)
        sys.exit(1)
