"""Creates, through Keystone's REST API, what berth's demo needs.

Run by entrypoint.sh on first start, against a Keystone that listens on
loopback only (so the container is not reported healthy before this is
done). Idempotent: what exists already is left alone.

- berth's service account (KEYSTONE_BERTH_USER, password from the file
  KEYSTONE_BERTH_PASSWORD_FILE) with the `reader` role on the system: it
  validates logins and reads projects, tags and role assignments.
- Optionally a demo user (KEYSTONE_DEMO_USER / KEYSTONE_DEMO_PASSWORD) with
  `member` on the project KEYSTONE_DEMO_PROJECT.

Both accounts are checked by logging in as them at the end.

Usage: setup_accounts.py URL   (URL: http://127.0.0.1:PORT/v3)
"""

import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

DOMAIN = "default"


def read_secret(path):
    with open(path, encoding="utf-8") as f:
        # berth strips the same trailing line ends from its password file.
        return f.read().rstrip("\r\n")


class Keystone:
    def __init__(self, v3):
        self.v3 = v3.rstrip("/")
        self.token = None

    def call(self, method, path, body=None, ok=(200,), token=None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.v3 + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        if token or self.token:
            req.add_header("X-Auth-Token", token or self.token)
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                status, headers, text = resp.status, resp.headers, resp.read()
        except urllib.error.HTTPError as e:
            status, headers, text = e.code, e.headers, e.read()
        if status not in ok:
            sys.exit(f"setup: {method} {path}: {status} {text.decode(errors='replace')}")
        value = json.loads(text) if text else None
        return status, headers, value

    def login(self, user, password, scope):
        body = {
            "auth": {
                "identity": {
                    "methods": ["password"],
                    "password": {
                        "user": {"name": user, "domain": {"id": DOMAIN}, "password": password}
                    },
                },
                "scope": scope,
            }
        }
        _, headers, value = self.call("POST", "/auth/tokens?nocatalog", body, ok=(201,))
        return headers["X-Subject-Token"], value["token"]

    def find(self, kind, name, **filters):
        query = urllib.parse.urlencode({"name": name, **filters})
        _, _, value = self.call("GET", f"/{kind}?{query}")
        items = value[kind]
        return items[0]["id"] if items else None

    def ensure_user(self, name, password):
        user_id = self.find("users", name, domain_id=DOMAIN)
        if user_id:
            print(f"setup: user {name} exists")
            return user_id
        _, _, value = self.call(
            "POST",
            "/users",
            {"user": {"name": name, "domain_id": DOMAIN, "password": password, "enabled": True}},
            ok=(201,),
        )
        print(f"setup: created user {name}")
        return value["user"]["id"]

    def ensure_project(self, name):
        project_id = self.find("projects", name, domain_id=DOMAIN)
        if project_id:
            print(f"setup: project {name} exists")
            return project_id
        _, _, value = self.call(
            "POST",
            "/projects",
            {"project": {"name": name, "domain_id": DOMAIN, "enabled": True}},
            ok=(201,),
        )
        print(f"setup: created project {name}")
        return value["project"]["id"]


def wait_until_up(v3, limit=120):
    deadline = time.monotonic() + limit
    while True:
        try:
            with urllib.request.urlopen(v3, timeout=3) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            sys.exit(f"setup: Keystone did not answer at {v3}")
        time.sleep(0.5)


def main():
    v3 = sys.argv[1]
    env = os.environ
    admin_password = read_secret(env["KEYSTONE_ADMIN_PASSWORD_FILE"])
    berth_user = env.get("KEYSTONE_BERTH_USER", "berth")
    berth_password = read_secret(env["KEYSTONE_BERTH_PASSWORD_FILE"])
    demo_user = env.get("KEYSTONE_DEMO_USER", "")
    demo_password = env.get("KEYSTONE_DEMO_PASSWORD", "")
    demo_project = env.get("KEYSTONE_DEMO_PROJECT", "demo")

    wait_until_up(v3)
    ks = Keystone(v3)
    ks.token, _ = ks.login(
        "admin", admin_password, {"project": {"name": "admin", "domain": {"id": DOMAIN}}}
    )
    roles = {}
    for role in ("reader", "member"):
        roles[role] = ks.find("roles", role)
        if not roles[role]:
            sys.exit(f"setup: no role {role}: did keystone-manage bootstrap run?")

    berth_id = ks.ensure_user(berth_user, berth_password)
    ks.call("PUT", f"/system/users/{berth_id}/roles/{roles['reader']}", ok=(204,))
    print(f"setup: {berth_user} has reader on the system")

    if demo_user:
        if not demo_password:
            sys.exit("setup: KEYSTONE_DEMO_USER is set but KEYSTONE_DEMO_PASSWORD is not")
        project_id = ks.ensure_project(demo_project)
        demo_id = ks.ensure_user(demo_user, demo_password)
        ks.call(
            "PUT", f"/projects/{project_id}/users/{demo_id}/roles/{roles['member']}", ok=(204,)
        )
        print(f"setup: {demo_user} has member on project {demo_project}")

    # What berth will do: log in as its account, scoped to the system, and
    # read projects; and the demo user's own login.
    token, body = ks.login(berth_user, berth_password, {"system": {"all": True}})
    names = sorted(r["name"] for r in body["roles"])
    if "reader" not in names:
        sys.exit(f"setup: {berth_user}'s system token has roles {names}, no reader")
    ks.call("GET", "/projects", token=token)
    if demo_user:
        ks.login(demo_user, demo_password, {"project": {"id": project_id}})
    print("setup: done")


if __name__ == "__main__":
    main()
