#!/usr/bin/env python3
"""Cairn exec plugin, reference implementation: a tiny "cloud" kept in a JSON file.

Copy this file to start a plugin of your own. Cairn starts the plugin, writes one
JSON request per line to its stdin, and reads one JSON response per line from its
stdout; stderr goes to Cairn's logs. The protocol is described in
docs/providers.md and its JSON Schema is schemas/exec-plugin.schema.json.

Usage:
    reference_plugin.py --state-dir DIR [--crash-on OP] [--hang-on OP] [--garbage-on OP]

The cloud lives in DIR/state.json. Every change is written to a temporary file,
fsynced and renamed over the old state before the answer goes out, so an answer
that reached Cairn is never lost. Provider ids look like `ref-m-1` (n: network,
s: subnet, f: firewall rule, m: machine); machines get the next free host
address of their subnet's CIDR.

Test switches (each may be repeated; OP is hello, create, delete, describe,
lookup or list):
    --crash-on OP    exit with status 3, without answering, when OP arrives.
    --hang-on OP     never answer OP: sleep until killed.
    --garbage-on OP  answer OP with a line that is not JSON.

Try it by hand:
    printf '%s\\n' '{"v":1,"id":1,"op":"hello","cairn":"0.1.0","versions":[1]}' \\
        '{"v":1,"id":2,"op":"list","cluster":"demo"}' \\
        | python3 tools/plugins/reference_plugin.py --state-dir /tmp/ref
"""

import argparse
import ipaddress
import json
import os
import sys
import tempfile
import time

PROTOCOL_VERSION = 1
OPS = ("hello", "create", "delete", "describe", "lookup", "list")
ID_LETTER = {"network": "n", "subnet": "s", "firewall_rule": "f", "machine": "m"}


class PluginError(Exception):
    """An error answered to Cairn; `retryable` says whether trying again may help."""

    def __init__(self, message, retryable=False):
        super().__init__(message)
        self.message = message
        self.retryable = retryable


class Cloud:
    """The resources, by provider id, persisted in one JSON file."""

    def __init__(self, state_dir):
        self.state_dir = state_dir
        self.path = os.path.join(state_dir, "state.json")
        os.makedirs(state_dir, exist_ok=True)
        try:
            with open(self.path, encoding="utf-8") as file:
                self.state = json.load(file)
        except FileNotFoundError:
            self.state = {"counters": {}, "resources": {}}

    def save(self):
        """Replaces the state file atomically and durably."""
        fd, temp = tempfile.mkstemp(dir=self.state_dir, prefix=".state-", suffix=".json")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as file:
                json.dump(self.state, file, indent=1, sort_keys=True)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temp, self.path)
        except BaseException:
            os.unlink(temp)
            raise
        dir_fd = os.open(self.state_dir, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def resources(self):
        return self.state["resources"].values()

    def lookup(self, token):
        return next((r for r in self.resources() if r["token"] == token), None)

    def create(self, cluster, token, spec):
        existing = self.lookup(token)
        if existing is not None:
            return existing  # The same token always means the same resource.
        if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in ID_LETTER:
            raise PluginError(f"unknown resource spec {json.dumps(spec)[:200]}")
        kind, body = next(iter(spec.items()))
        address = self.machine_address(cluster, body) if kind == "machine" else None
        counter = self.state["counters"].get(kind, 0) + 1
        self.state["counters"][kind] = counter
        resource = {
            "providerId": f"ref-{ID_LETTER[kind]}-{counter}",
            "cluster": cluster,
            "token": token,
            "spec": spec,
            "address": address,
        }
        self.state["resources"][resource["providerId"]] = resource
        self.save()
        return resource

    def machine_address(self, cluster, machine):
        """The first host address of the machine's subnet that no machine uses."""
        subnet = next(
            (
                r["spec"]["subnet"]
                for r in self.resources()
                if r["cluster"] == cluster
                and "subnet" in r["spec"]
                and r["spec"]["subnet"]["name"] == machine["subnet"]
            ),
            None,
        )
        if subnet is None:
            # The subnet may simply not be created yet: worth a retry.
            raise PluginError(
                f"subnet {machine['subnet']!r} of cluster {cluster!r} does not exist",
                retryable=True,
            )
        used = {r["address"] for r in self.resources() if r["cluster"] == cluster and r["address"]}
        for host in ipaddress.ip_network(subnet["cidr"], strict=False).hosts():
            if str(host) not in used:
                return str(host)
        raise PluginError(f"subnet {subnet['name']!r} ({subnet['cidr']}) is full")

    def delete(self, provider_id):
        if self.state["resources"].pop(provider_id, None) is not None:
            self.save()
        return None  # Deleting what is already gone succeeds too.

    def describe(self, provider_id):
        return self.state["resources"].get(provider_id)

    def list(self, cluster):
        found = [r for r in self.resources() if r["cluster"] == cluster]
        return sorted(found, key=lambda r: (len(r["providerId"]), r["providerId"]))


def handle(cloud, request):
    """Answers one request with its result, or raises PluginError."""
    op = request.get("op")
    if op == "hello":
        return {"name": "reference", "versions": [PROTOCOL_VERSION]}
    if op == "create":
        return cloud.create(request["cluster"], request["token"], request["spec"])
    if op == "delete":
        return cloud.delete(request["providerId"])
    if op == "describe":
        return cloud.describe(request["providerId"])
    if op == "lookup":
        return cloud.lookup(request["token"])
    if op == "list":
        return cloud.list(request["cluster"])
    raise PluginError(f"unknown op {op!r}")


def send(message):
    sys.stdout.write(json.dumps(message, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--crash-on", action="append", default=[], choices=OPS)
    parser.add_argument("--hang-on", action="append", default=[], choices=OPS)
    parser.add_argument("--garbage-on", action="append", default=[], choices=OPS)
    args = parser.parse_args()
    cloud = Cloud(args.state_dir)

    for line in sys.stdin:  # Ends cleanly when Cairn closes stdin (EOF).
        if not line.strip():
            continue
        try:
            request = json.loads(line)
            if not isinstance(request, dict):
                raise ValueError("a request must be a JSON object")
        except ValueError as error:
            send({"v": PROTOCOL_VERSION, "id": None,
                  "error": {"message": f"not a JSON request: {error}", "retryable": False}})
            continue
        op = request.get("op")
        if op in args.crash_on:
            print(f"reference plugin: crashing on {op}, as asked", file=sys.stderr, flush=True)
            sys.exit(3)
        if op in args.hang_on:
            print(f"reference plugin: hanging on {op}, as asked", file=sys.stderr, flush=True)
            while True:
                time.sleep(3600)
        if op in args.garbage_on:
            sys.stdout.write(f"this is not JSON: garbage for {op}, as asked\n")
            sys.stdout.flush()
            continue
        answer = {"v": PROTOCOL_VERSION, "id": request.get("id")}
        try:
            if request.get("v") != PROTOCOL_VERSION:
                raise PluginError(f"unsupported protocol version {request.get('v')!r}")
            answer["ok"] = handle(cloud, request)
        except PluginError as error:
            answer["error"] = {"message": error.message, "retryable": error.retryable}
        except (KeyError, TypeError, ValueError) as error:
            answer["error"] = {"message": f"malformed {op} request: {error!r}", "retryable": False}
        except OSError as error:
            # The state could not be saved: nothing was promised, so a retry may work.
            answer["error"] = {"message": f"cannot save the state: {error}", "retryable": True}
        send(answer)


if __name__ == "__main__":
    main()
