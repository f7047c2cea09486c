#!/usr/bin/env python3
"""Generate respguard's command table from a live redis-server.

Owns `src/command/table.rs` (the one row-per-command table) and
`src/command/getkeys_fixture.rs` (argvs whose keys were checked against the
server's own `COMMAND GETKEYSANDFLAGS`). Both files are committed; rerun this
script rather than editing them.

Usage:
    python3 scripts/gen-command-table.py            # rewrite both files
    python3 scripts/gen-command-table.py --check    # exit 1 if they are stale

It starts a throwaway `redis-server` on a free loopback port (no persistence,
temporary working directory), asks it `COMMAND` and `COMMAND DOCS` over a raw
RESP socket, and stops it again. Only the Python standard library is used.

What the server cannot tell us is added by hand below and documented where it
is defined: the TTL-bearing arguments, the commands whose keys need a
hand-written extractor, the MAY_REPLICATE flag (7.0's COMMAND reply omits it)
and the RedisJSON module commands.
"""

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TABLE_PATH = os.path.join(ROOT, "src", "command", "table.rs")
FIXTURE_PATH = os.path.join(ROOT, "src", "command", "getkeys_fixture.rs")
EXPECTED_VERSION_PREFIX = "7.0."

# --------------------------------------------------------------------------
# Name -> Rust constant maps. An unknown name from the server aborts the run:
# silently dropping a flag would weaken every policy built on the table.
# --------------------------------------------------------------------------

CMD_FLAGS = {
    "write": "CMD_WRITE",
    "readonly": "CMD_READONLY",
    "denyoom": "CMD_DENYOOM",
    "module": "CMD_MODULE",
    "admin": "CMD_ADMIN",
    "pubsub": "CMD_PUBSUB",
    "noscript": "CMD_NOSCRIPT",
    "blocking": "CMD_BLOCKING",
    "loading": "CMD_LOADING",
    "stale": "CMD_STALE",
    "skip_monitor": "CMD_SKIP_MONITOR",
    "skip_slowlog": "CMD_SKIP_SLOWLOG",
    "asking": "CMD_ASKING",
    "fast": "CMD_FAST",
    "no_auth": "CMD_NO_AUTH",
    "may_replicate": "CMD_MAY_REPLICATE",
    "no_mandatory_keys": "CMD_NO_MANDATORY_KEYS",
    "no_async_loading": "CMD_NO_ASYNC_LOADING",
    "no_multi": "CMD_NO_MULTI",
    "movablekeys": "CMD_MOVABLE_KEYS",
    "allow_busy": "CMD_ALLOW_BUSY",
}

ACL_CATEGORIES = {
    "@keyspace": "ACL_KEYSPACE",
    "@read": "ACL_READ",
    "@write": "ACL_WRITE",
    "@set": "ACL_SET",
    "@sortedset": "ACL_SORTEDSET",
    "@list": "ACL_LIST",
    "@hash": "ACL_HASH",
    "@string": "ACL_STRING",
    "@bitmap": "ACL_BITMAP",
    "@hyperloglog": "ACL_HYPERLOGLOG",
    "@geo": "ACL_GEO",
    "@stream": "ACL_STREAM",
    "@pubsub": "ACL_PUBSUB",
    "@admin": "ACL_ADMIN",
    "@fast": "ACL_FAST",
    "@slow": "ACL_SLOW",
    "@blocking": "ACL_BLOCKING",
    "@dangerous": "ACL_DANGEROUS",
    "@connection": "ACL_CONNECTION",
    "@transaction": "ACL_TRANSACTION",
    "@scripting": "ACL_SCRIPTING",
}

KS_FLAGS = {
    "RO": "KS_RO",
    "RW": "KS_RW",
    "OW": "KS_OW",
    "RM": "KS_RM",
    "access": "KS_ACCESS",
    "update": "KS_UPDATE",
    "insert": "KS_INSERT",
    "delete": "KS_DELETE",
    "not_key": "KS_NOT_KEY",
    "incomplete": "KS_INCOMPLETE",
    "variable_flags": "KS_VARIABLE_FLAGS",
}

# --------------------------------------------------------------------------
# Hand-maintained attributes.
# --------------------------------------------------------------------------

# Redis 7.0 declares MAY_REPLICATE on exactly these commands (src/commands/*.json)
# but its COMMAND reply does not report the flag, so it cannot be read back.
MAY_REPLICATE = {"EVAL", "EVALSHA", "FCALL", "PFCOUNT", "PUBLISH", "SPUBLISH"}

# Where a command carries an expiry. Indices are argv positions (0 = command).
TTL_ARGS = {
    "SET": "TtlArgs::SetOptions",
    "GETEX": "TtlArgs::GetExOptions",
    "EXPIRE": "TtlArgs::Seconds(2)",
    "SETEX": "TtlArgs::Seconds(2)",
    "PEXPIRE": "TtlArgs::Millis(2)",
    "PSETEX": "TtlArgs::Millis(2)",
    "EXPIREAT": "TtlArgs::UnixSeconds(2)",
    "PEXPIREAT": "TtlArgs::UnixMillis(2)",
    "RESTORE": "TtlArgs::Restore",
    "RESTORE-ASKING": "TtlArgs::Restore",
    "PERSIST": "TtlArgs::Persist",
}

# Commands whose key specs Redis itself does not trust (a spec that is
# unknown, INCOMPLETE or VARIABLE_FLAGS) and for which it falls back to a C
# getkeys_proc. Each maps to the Rust `KeyRule` that re-implements that proc.
KEY_RULES = {
    "SORT": "KeyRule::Sort",
    "SORT_RO": "KeyRule::SortRo",
    "MIGRATE": "KeyRule::Migrate",
    "SET": "KeyRule::Set",
    "BITFIELD": "KeyRule::Bitfield",
}


def spec(flags, begin, find):
    return {"flags": flags, "begin": begin, "find": find}


def one_key(flags, index=1):
    return [spec(flags, ("index", index), ("range", 0, 1, 0))]


# RedisJSON (2.x) commands. The module registers them with legacy
# first/last/step only, so Redis would report arity -1 and VARIABLE_FLAGS
# specs; these rows carry the real minimum arity (always "at least", so a
# newer module version with extra optional arguments is never refused) and
# precise key-spec flags taken from the RedisJSON command reference.
MODULE_COMMANDS = [
    # name, arity, flags, key specs
    ("JSON.ARRAPPEND", -4, ["write", "denyoom"], one_key(["RW", "insert"])),
    ("JSON.ARRINDEX", -4, ["readonly"], one_key(["RO"])),
    ("JSON.ARRINSERT", -5, ["write", "denyoom"], one_key(["RW", "insert"])),
    ("JSON.ARRLEN", -2, ["readonly"], one_key(["RO"])),
    ("JSON.ARRPOP", -2, ["write"], one_key(["RW", "access", "delete"])),
    ("JSON.ARRTRIM", -5, ["write"], one_key(["RW", "delete"])),
    ("JSON.CLEAR", -2, ["write"], one_key(["RW", "delete"])),
    ("JSON.DEL", -2, ["write"], one_key(["RW", "delete"])),
    ("JSON.FORGET", -2, ["write"], one_key(["RW", "delete"])),
    ("JSON.GET", -2, ["readonly"], one_key(["RO", "access"])),
    ("JSON.MERGE", -4, ["write", "denyoom"], one_key(["RW", "update"])),
    # JSON.MGET key [key ...] path: every argument but the last is a key.
    ("JSON.MGET", -3, ["readonly"],
     [spec(["RO", "access"], ("index", 1), ("range", -2, 1, 0))]),
    # JSON.MSET key path value [key path value ...]
    ("JSON.MSET", -4, ["write", "denyoom"],
     [spec(["RW", "update"], ("index", 1), ("range", -1, 3, 0))]),
    ("JSON.NUMINCRBY", -4, ["write"], one_key(["RW", "access", "update"])),
    ("JSON.NUMMULTBY", -4, ["write"], one_key(["RW", "access", "update"])),
    ("JSON.OBJKEYS", -2, ["readonly"], one_key(["RO", "access"])),
    ("JSON.OBJLEN", -2, ["readonly"], one_key(["RO"])),
    ("JSON.RESP", -2, ["readonly"], one_key(["RO", "access"])),
    # JSON.SET key path value [NX|XX]: RW because a non-root path updates the
    # existing document; UPDATE because it may also create the key.
    ("JSON.SET", -4, ["write", "denyoom"], one_key(["RW", "update"])),
    ("JSON.STRAPPEND", -3, ["write", "denyoom"], one_key(["RW", "insert"])),
    ("JSON.STRLEN", -2, ["readonly"], one_key(["RO"])),
    ("JSON.TOGGLE", -3, ["write"], one_key(["RW", "access", "update"])),
    ("JSON.TYPE", -2, ["readonly"], one_key(["RO"])),
]

# Module containers: name, arity, [(subcommand, arity, flags, key specs)].
MODULE_CONTAINERS = [
    ("JSON.DEBUG", -2, [
        ("HELP", 2, [], []),
        ("MEMORY", -3, ["readonly"], one_key(["RO"], index=2)),
    ]),
]

# --------------------------------------------------------------------------
# Fixture argvs: the awkward commands, each checked against the live server.
# Key names are unique within an argv so the server's reply (key names) maps
# back to positions unambiguously.
# --------------------------------------------------------------------------

HAND_CASES = [
    "GET k",
    "SET k v",
    "SET k v GET",
    "SET k v get",
    "SET k v EX 10 GET",
    "SET k GET",  # GET is the value here, not the option
    "SET k v NX PX 100 KEEPTTL",
    "GETEX k EX 10",
    "GETDEL k",
    "HSET h f v f2 v2",
    "MSET a 1 b 2 c 3",
    "MSETNX a 1 b 2",
    "DEL a b c",
    "UNLINK a b",
    "EXISTS a b c",
    "TOUCH a b",
    "WATCH a b",
    "EVAL s 2 a b x y",
    "EVAL s 0 x",
    "EVAL s 0",
    "EVALSHA sha 1 a x",
    "EVAL_RO s 1 a",
    "EVALSHA_RO sha 2 a b",
    "FCALL f 2 a b x",
    "FCALL_RO f 1 a",
    "FCALL f 0",
    "XREAD COUNT 2 STREAMS s1 s2 0 1",
    "XREAD BLOCK 0 STREAMS s1 $",
    "xread streams s1 s2 s3 0 1 2",
    "XREAD STREAMS s1",  # unbalanced
    "XREAD COUNT 1 s1 0",  # no STREAMS keyword
    "XREADGROUP GROUP g c COUNT 1 STREAMS s1 s2 > 0",
    "XREADGROUP GROUP STREAMS c STREAMS s1 >",  # group named STREAMS
    "XREADGROUP GROUP g c NOACK STREAMS s1 0",
    "ZUNIONSTORE d 2 a b WEIGHTS 1 2",
    "ZUNIONSTORE d 3 a b",  # numkeys past the end
    "ZUNIONSTORE d x a b",  # numkeys not a number
    "ZINTERSTORE d 1 a",
    "ZDIFFSTORE d 2 a b",
    "ZUNION 2 a b WITHSCORES",
    "ZUNION 0 a",
    "ZINTER 3 a b c",
    "ZDIFF 2 a b",
    "ZINTERCARD 2 a b LIMIT 1",
    "SINTERCARD 2 a b",
    "SINTERCARD -1 a b",
    "LMPOP 2 a b LEFT COUNT 1",
    "LMPOP 0 a LEFT",
    "BLMPOP 0 2 a b RIGHT",
    "ZMPOP 1 a MIN",
    "BZMPOP 1 2 a b MAX COUNT 2",
    "SORT k",
    "SORT k STORE d",
    "SORT k BY w_* LIMIT 0 10 GET o_* STORE d",
    "SORT k LIMIT 0 1 STORE d",
    "SORT k STORE d1 STORE d2",
    "SORT k GET STORE",
    "SORT k GET # GET o_* ALPHA DESC store d",
    "SORT_RO k BY w_* GET #",
    "GEORADIUS k 0 0 10 km STORE d",
    "GEORADIUS k 0 0 10 km STOREDIST d",
    "GEORADIUS k 0 0 10 km WITHDIST",
    "GEORADIUS k 0 0 10 km STORE d1 STOREDIST d2",
    "GEORADIUS k 0 0 10 km COUNT 3 ASC STORE d",
    "GEORADIUSBYMEMBER k m 10 km STORE d",
    "GEORADIUSBYMEMBER k m 10 km STOREDIST d",
    "GEORADIUS_RO k 0 0 10 km",
    "GEOSEARCHSTORE d src FROMMEMBER m BYRADIUS 10 km",
    "COPY a b",
    "COPY a b DB 1 REPLACE",
    "RENAME a b",
    "RENAMENX a b",
    "SMOVE a b m",
    "LMOVE a b LEFT RIGHT",
    "BLMOVE a b LEFT RIGHT 0",
    "RPOPLPUSH a b",
    "BRPOPLPUSH a b 0",
    "BITOP AND d a b c",
    "BITOP NOT d a",
    "MIGRATE h 6379 k 0 5000",
    "MIGRATE h 6379 k 0 5000 COPY REPLACE",
    "MIGRATE h 6379 '' 0 5000 KEYS a b c",
    "MIGRATE h 6379 '' 0 5000 COPY REPLACE AUTH pw KEYS a b",
    "MIGRATE h 6379 '' 0 5000 AUTH2 u pw KEYS a",
    "MIGRATE h 6379 '' 0 5000 AUTH KEYS KEYS a",  # password "KEYS"
    "OBJECT ENCODING k",
    "OBJECT FREQ k",
    "OBJECT IDLETIME k",
    "OBJECT REFCOUNT k",
    "object encoding k",
    "MEMORY USAGE k SAMPLES 5",
    "XINFO STREAM s FULL COUNT 10",
    "XINFO GROUPS s",
    "XINFO CONSUMERS s g",
    "XGROUP CREATE s g $ MKSTREAM",
    "XGROUP DESTROY s g",
    "XGROUP CREATECONSUMER s g c",
    "XGROUP DELCONSUMER s g c",
    "XGROUP SETID s g 0",
    "BLPOP a b 0",
    "BRPOP a 0",
    "BZPOPMIN a b 0",
    "PFCOUNT a b",
    "PFMERGE d a b",
    "SUNIONSTORE d a b",
    "SDIFF a b",
    "LCS a b",
    "RESTORE k 0 payload REPLACE",
    "EXPIRE k 10",
    "PEXPIREAT k 1700000000000",
    "PERSIST k",
    "BITFIELD k GET i8 0",
    "BITFIELD k SET i8 0 1",
    "BITFIELD k GET i8 0 INCRBY i8 0 1",
    "BITFIELD k OVERFLOW SAT GET i8 0",
    "BITFIELD_RO k GET i8 0",
    "XCLAIM s g c 0 id",
    "XAUTOCLAIM s g c 0 0",
    "XADD s * f v",
    "ZRANGESTORE d src 0 -1",
    "GEOSEARCH k FROMLONLAT 0 0 BYBOX 1 1 km",
    "SINTERSTORE d a b",
    "DUMP k",
    "LPUSH l a b",
    "SPUBLISH ch msg",  # only a NOT_KEY spec: no keys
]


# --------------------------------------------------------------------------
# RESP client (just enough for COMMAND replies).
# --------------------------------------------------------------------------

class RespError(Exception):
    pass


class Resp:
    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.rfile = self.sock.makefile("rb")

    def close(self):
        self.rfile.close()
        self.sock.close()

    def call(self, *args):
        out = [b"*%d\r\n" % len(args)]
        for a in args:
            if isinstance(a, str):
                a = a.encode()
            out.append(b"$%d\r\n%s\r\n" % (len(a), a))
        self.sock.sendall(b"".join(out))
        reply = self._read()
        if isinstance(reply, RespError):
            raise reply
        return reply

    def _read(self):
        line = self.rfile.readline()
        if not line.endswith(b"\r\n"):
            raise RuntimeError("connection closed mid-reply")
        kind, rest = line[:1], line[1:-2]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            return RespError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None
            data = self.rfile.read(n + 2)
            return data[:-2].decode()
        if kind == b"*":
            n = int(rest)
            if n < 0:
                return None
            return [self._read() for _ in range(n)]
        raise RuntimeError("unexpected RESP type %r" % line)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(binary):
    workdir = tempfile.mkdtemp(prefix="respguard-gen-")
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--daemonize", "no", "--dir", workdir,
         "--logfile", os.path.join(workdir, "redis.log")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 10
    while True:
        try:
            conn = Resp(port)
            conn.call("PING")
            return proc, conn, workdir
        except (OSError, RespError):
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                shutil.rmtree(workdir, ignore_errors=True)
                raise RuntimeError("redis-server did not start on port %d" % port)
            time.sleep(0.05)


def stop_server(proc, conn, workdir):
    try:
        conn.close()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(workdir, ignore_errors=True)


# --------------------------------------------------------------------------
# Parsing the server's replies.
# --------------------------------------------------------------------------

def pairs(flat):
    return dict(zip(flat[::2], flat[1::2]))


def parse_key_spec(raw):
    d = pairs(raw)
    bs = pairs(d["begin_search"])
    fk = pairs(d["find_keys"])
    if bs["type"] == "index":
        begin = ("index", pairs(bs["spec"])["index"])
    elif bs["type"] == "keyword":
        b = pairs(bs["spec"])
        begin = ("keyword", b["keyword"], b["startfrom"])
    elif bs["type"] == "unknown":
        begin = ("unknown",)
    else:
        raise RuntimeError("unknown begin_search type %r" % bs["type"])
    if fk["type"] == "range":
        f = pairs(fk["spec"])
        find = ("range", f["lastkey"], f["keystep"], f["limit"])
        if f["keystep"] < 1:
            raise RuntimeError("non-positive key step in %r" % raw)
    elif fk["type"] == "keynum":
        f = pairs(fk["spec"])
        find = ("keynum", f["keynumidx"], f["firstkey"], f["keystep"])
        if f["keystep"] < 1:
            raise RuntimeError("non-positive key step in %r" % raw)
    elif fk["type"] == "unknown":
        find = ("unknown",)
    else:
        raise RuntimeError("unknown find_keys type %r" % fk["type"])
    return {"flags": list(d["flags"]), "begin": begin, "find": find,
            "notes": d.get("notes")}


def parse_command(raw):
    name = raw[0].upper()
    row = {
        "name": name,
        "arity": raw[1],
        "flags": list(raw[2]),
        "acl": list(raw[6]),
        "key_specs": [parse_key_spec(s) for s in raw[8]],
        "subcommands": [parse_command(s) for s in (raw[9] or [])],
    }
    for f in row["flags"]:
        if f not in CMD_FLAGS:
            raise RuntimeError("%s: unknown command flag %r" % (name, f))
    for c in row["acl"]:
        if c not in ACL_CATEGORIES:
            raise RuntimeError("%s: unknown ACL category %r" % (name, c))
    for s in row["key_specs"]:
        for f in s["flags"]:
            if f not in KS_FLAGS:
                raise RuntimeError("%s: unknown key-spec flag %r" % (name, f))
    return row


def module_row(name, arity, flags, key_specs, subcommands=()):
    flags = ["module"] + list(flags)
    acl = []
    if "readonly" in flags:
        acl.append("@read")
    if "write" in flags:
        acl.append("@write")
    acl.append("@fast" if "fast" in flags else "@slow")
    return {
        "name": name,
        "arity": arity,
        "flags": flags,
        "acl": acl,
        "key_specs": [dict(s, notes=None) for s in key_specs],
        "subcommands": list(subcommands),
    }


def module_rows():
    rows = [module_row(*c) for c in MODULE_COMMANDS]
    for name, arity, subs in MODULE_CONTAINERS:
        rows.append(module_row(name, arity, [], [], [
            module_row("%s|%s" % (name, sub), a, f, ks)
            for sub, a, f, ks in subs
        ]))
    return rows


def all_rows(rows):
    for r in rows:
        yield r
        yield from r["subcommands"]


def needs_rule(row):
    for s in row["key_specs"]:
        if s["begin"][0] == "unknown" or s["find"][0] == "unknown":
            return True
        if "incomplete" in s["flags"] or "variable_flags" in s["flags"]:
            return True
    return False


def finish_rows(rows):
    by_name = {r["name"]: r for r in all_rows(rows)}
    for table in (TTL_ARGS, KEY_RULES):
        for name in table:
            if name not in by_name:
                raise RuntimeError("hand-maintained entry %s is not a command" % name)
    for name in MAY_REPLICATE:
        if name not in by_name:
            raise RuntimeError("MAY_REPLICATE entry %s is not a command" % name)
        if "may_replicate" not in by_name[name]["flags"]:
            by_name[name]["flags"].append("may_replicate")
    for r in all_rows(rows):
        r["ttl"] = TTL_ARGS.get(r["name"], "TtlArgs::None")
        r["rule"] = KEY_RULES.get(r["name"], "KeyRule::Specs")
        if needs_rule(r) and r["rule"] == "KeyRule::Specs":
            raise RuntimeError(
                "%s has key specs Redis cannot evaluate; add a KeyRule" % r["name"])
    rows.sort(key=lambda r: r["name"].encode())
    next_id = 0
    for r in rows:
        r["subcommands"].sort(key=lambda s: s["name"].encode())
        r["id"] = next_id
        next_id += 1
        for s in r["subcommands"]:
            if s["subcommands"]:
                raise RuntimeError("nested containers are not supported: %s" % s["name"])
            s["id"] = next_id
            next_id += 1
    names = [r["name"] for r in all_rows(rows)]
    if len(names) != len(set(names)):
        raise RuntimeError("duplicate command names")
    return next_id


# --------------------------------------------------------------------------
# Rust rendering.
# --------------------------------------------------------------------------

def rust_str(s):
    out = []
    for ch in s:
        if ch in "\\\"":
            out.append("\\" + ch)
        elif 0x20 <= ord(ch) < 0x7F:
            out.append(ch)
        else:
            out.append("\\u{%x}" % ord(ch))
    return '"' + "".join(out) + '"'


# Constants referenced by the rendered table, so its `use` list is exact.
USED = set()


def bits(names, table, used=USED):
    consts = [table[n] for n in names]
    used.update(consts)
    return " | ".join(consts) if consts else "0"


def render_spec(s, indent):
    pad = " " * indent
    lines = []
    if s.get("notes"):
        lines.append("%s// %s" % (pad, s["notes"]))
    b = s["begin"]
    if b[0] == "index":
        begin = "BeginSearch::Index(%d)" % b[1]
    elif b[0] == "keyword":
        begin = "BeginSearch::Keyword { keyword: %s, start_from: %d }" % (rust_str(b[1]), b[2])
    else:
        begin = "BeginSearch::Unknown"
    f = s["find"]
    if f[0] == "range":
        find = "FindKeys::Range { last_key: %d, step: %d, limit: %d }" % f[1:]
    elif f[0] == "keynum":
        find = "FindKeys::KeyNum { key_num_idx: %d, first_key: %d, step: %d }" % f[1:]
    else:
        find = "FindKeys::Unknown"
    lines.append("%sKeySpec { flags: %s, begin: %s, find: %s }," % (
        pad, bits(s["flags"], KS_FLAGS), begin, find))
    return lines


def render_row(r, indent):
    pad = " " * indent
    lines = ["%sCommandSpec {" % pad]
    inner = " " * (indent + 4)
    lines.append("%sname: %s," % (inner, rust_str(r["name"])))
    lines.append("%sarity: %d," % (inner, r["arity"]))
    ordered_flags = [f for f in CMD_FLAGS if f in r["flags"]]
    lines.append("%sflags: %s," % (inner, bits(ordered_flags, CMD_FLAGS)))
    ordered_acl = [c for c in ACL_CATEGORIES if c in r["acl"]]
    lines.append("%sacl_categories: %s," % (inner, bits(ordered_acl, ACL_CATEGORIES)))
    if r["key_specs"]:
        lines.append("%skey_specs: &[" % inner)
        for s in r["key_specs"]:
            lines.extend(render_spec(s, indent + 8))
        lines.append("%s]," % inner)
    else:
        lines.append("%skey_specs: &[]," % inner)
    if r["subcommands"]:
        lines.append("%ssubcommands: &[" % inner)
        for s in r["subcommands"]:
            lines.extend(render_row(s, indent + 8))
        lines.append("%s]," % inner)
    else:
        lines.append("%ssubcommands: &[]," % inner)
    lines.append("%sttl: %s," % (inner, r["ttl"]))
    lines.append("%skey_rule: %s," % (inner, r["rule"]))
    lines.append("%sid: %d," % (inner, r["id"]))
    lines.append("%s}," % pad)
    return lines


def render_table(rows, count, version):
    top = len(rows)
    body = []
    for r in rows:
        body.extend(render_row(r, 4))
    lines = [
        "//! The command table: one row per Redis command and subcommand, with arity, flags, ACL",
        "//! categories, key specs, TTL-bearing arguments and the key-extraction rule.",
        "//!",
        "//! GENERATED by `scripts/gen-command-table.py` from redis-server %s (`COMMAND`)," % version,
        "//! plus the hand-maintained rows and attributes defined in that script (RedisJSON",
        "//! commands, TTL arguments, key rules, MAY_REPLICATE). Do not edit by hand: change the",
        "//! script and run `python3 scripts/gen-command-table.py` (it needs `redis-server` 7.0.x on",
        "//! PATH and starts its own throwaway instance on a free loopback port).",
        "",
        "use super::{%s};" % ", ".join(sorted(USED | {
            "BeginSearch", "CommandSpec", "FindKeys", "KeyRule", "KeySpec", "TtlArgs"})),
        "",
        "/// The Redis version the table was read from.",
        "pub const REDIS_VERSION: &str = %s;" % rust_str(version),
        "",
        "/// Number of rows, containers and subcommands alike (`CommandSpec::index` is below this).",
        "pub const COMMAND_COUNT: usize = %d;" % count,
        "",
        "/// Top-level commands (%d of them), sorted by name; subcommands hang off their container." % top,
        "pub static COMMANDS: &[CommandSpec] = &[",
    ]
    lines.extend(body)
    lines.append("];")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------
# Fixture: sample argvs, both hand-written and synthesised from COMMAND DOCS.
# --------------------------------------------------------------------------

def split_case(text):
    out = []
    for word in text.split(" "):
        out.append("" if word == "''" else word)
    return out


class Synth:
    """Builds one argv from a command's documented argument tree."""

    def __init__(self, mode):
        self.mode = mode  # "min": required only; "first"/"last": everything, oneof pick
        self.keys = 0
        self.strings = 0
        self.items = []  # (value, kind, name)

    def emit(self, value, kind, name):
        self.items.append([value, kind, name])

    def arg(self, a, forced=False):
        a = pairs(a)
        flags = a.get("flags", [])
        if "optional" in flags and self.mode == "min" and not forced:
            return
        reps = 2 if ("multiple" in flags and self.mode != "min") else 1
        token = a.get("token")
        if token is not None and "multiple_token" not in flags:
            self.emit(token, "token", a["name"])
        for _ in range(reps):
            if token is not None and "multiple_token" in flags:
                self.emit(token, "token", a["name"])
            self.value(a)

    def value(self, a):
        kind = a["type"]
        if kind == "pure-token":
            return
        if kind == "block":
            for sub in a["arguments"]:
                self.arg(sub)
        elif kind == "oneof":
            alts = a["arguments"]
            self.arg(alts[-1] if self.mode == "last" else alts[0], forced=True)
        elif kind == "key":
            self.keys += 1
            self.emit("key:%d" % self.keys, "key", a["name"])
        elif kind == "integer":
            self.emit("1", "integer", a["name"])
        elif kind == "double":
            self.emit("1.5", "double", a["name"])
        elif kind == "unix-time":
            self.emit("1700000000", "unix-time", a["name"])
        elif kind == "pattern":
            self.strings += 1
            self.emit("pat:%d:*" % self.strings, "pattern", a["name"])
        elif kind == "string":
            self.strings += 1
            self.emit("str:%d" % self.strings, "string", a["name"])
        else:
            raise RuntimeError("unknown argument type %r" % kind)

    def argv(self, prefix):
        items = self.items
        for i, item in enumerate(items):
            # numkeys must match the keys that follow it or Redis rejects the call.
            if item[1] == "integer" and item[2] == "numkeys":
                n = 0
                for nxt in items[i + 1:]:
                    if nxt[1] != "key":
                        break
                    n += 1
                item[0] = str(n)
        return list(prefix) + [it[0] for it in items]


def arity_ok(arity, argc):
    return argc == arity if arity > 0 else argc >= -arity


def synthesized_cases(rows, docs):
    cases = []
    # COMMAND replies in hash order; sort so regenerating is reproducible.
    for r in sorted(all_rows(rows), key=lambda r: r["name"].encode()):
        if "module" in r["flags"] or r["subcommands"]:
            continue
        if not any("not_key" not in s["flags"] for s in r["key_specs"]):
            continue
        parts = r["name"].split("|")
        if len(parts) == 1:
            doc = pairs(docs[parts[0].lower()])
        else:
            container = pairs(docs[parts[0].lower()])
            doc = pairs(pairs(container["subcommands"])[r["name"].lower()])
        for mode in ("min", "first", "last"):
            s = Synth(mode)
            for a in doc.get("arguments", []):
                s.arg(a)
            argv = s.argv(parts)
            if arity_ok(r["arity"], len(argv)):
                cases.append(argv)
    return cases


def key_positions(conn, argv):
    """Ask the server; None when it refuses, else [(index, [flag names])]."""
    try:
        reply = conn.call("COMMAND", "GETKEYSANDFLAGS", *argv)
    except RespError as e:
        msg = str(e)
        if "Invalid arguments" in msg or "Invalid number of arguments" in msg:
            return None
        if "no key arguments" in msg:
            return []
        raise RuntimeError("%r: %s" % (argv, msg))
    out = []
    for name, flags in reply:
        where = [i for i in range(1, len(argv)) if argv[i] == name]
        if len(where) != 1:
            raise RuntimeError("%r: key %r is ambiguous in the argv" % (argv, name))
        for f in flags:
            if f not in KS_FLAGS:
                raise RuntimeError("%r: unknown key flag %r" % (argv, f))
        out.append((where[0], flags))
    return out


def render_fixture(cases, version):
    used = set()
    body = []
    for argv, keys in cases:
        body.append("    GetKeysCase {")
        body.append("        argv: &[%s]," % ", ".join(rust_str(a) for a in argv))
        if keys is None:
            body.append("        keys: None,")
        else:
            items = ", ".join("(%d, %s)" % (i, bits(f, KS_FLAGS, used)) for i, f in keys)
            body.append("        keys: Some(&[%s])," % items)
        body.append("    },")
    lines = [
        "//! `COMMAND GETKEYSANDFLAGS` answers recorded from a live server, so the key-extraction",
        "//! tests compare `CommandSpec::keys` with Redis itself rather than with our reading of it.",
        "//!",
        "//! GENERATED by `scripts/gen-command-table.py` from redis-server %s. Do not edit by hand;" % version,
        "//! add argvs to `HAND_CASES` in the script and rerun it.",
        "",
        "use super::{%s};" % ", ".join(sorted(used)),
        "",
        "pub(super) struct GetKeysCase {",
        "    pub argv: &'static [&'static str],",
        "    /// `None` when Redis refused to extract keys because the arguments are malformed.",
        "    pub keys: Option<&'static [(usize, u32)]>,",
        "}",
        "",
        "pub(super) static GETKEYS_CASES: &[GetKeysCase] = &[",
    ]
    lines.extend(body)
    lines.append("];")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------

def rustfmt(path):
    exe = shutil.which("rustfmt")
    if exe is None:
        print("warning: rustfmt not found; %s is unformatted" % path, file=sys.stderr)
        return
    subprocess.run([exe, "--edition", "2021", path], check=True)


def generate(binary, allow_version):
    proc, conn, workdir = start_server(binary)
    try:
        info = conn.call("INFO", "server")
        version = next(l.split(":", 1)[1].strip() for l in info.splitlines()
                       if l.startswith("redis_version:"))
        if not version.startswith(EXPECTED_VERSION_PREFIX) and not allow_version:
            raise RuntimeError("redis-server %s found; the table tracks %sx "
                               "(pass --allow-version to override)"
                               % (version, EXPECTED_VERSION_PREFIX))
        rows = [parse_command(c) for c in conn.call("COMMAND")]
        docs = pairs(conn.call("COMMAND", "DOCS"))
        server_rows = list(rows)
        rows = server_rows + module_rows()
        count = finish_rows(rows)

        seen = set()
        cases = []
        for argv in [split_case(c) for c in HAND_CASES] + synthesized_cases(server_rows, docs):
            k = tuple(argv)
            if k in seen:
                continue
            seen.add(k)
            cases.append((argv, key_positions(conn, argv)))
    finally:
        stop_server(proc, conn, workdir)
    n_sub = sum(len(r["subcommands"]) for r in rows)
    print("%d rows (%d top-level, %d subcommands), %d fixture cases, redis %s"
          % (count, len(rows), n_sub, len(cases), version), file=sys.stderr)
    return render_table(rows, count, version), render_fixture(cases, version)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--redis-server", default="redis-server", help="server binary to query")
    ap.add_argument("--check", action="store_true", help="fail if the committed files are stale")
    ap.add_argument("--allow-version", action="store_true",
                    help="accept a redis-server other than %sx" % EXPECTED_VERSION_PREFIX)
    args = ap.parse_args()
    binary = shutil.which(args.redis_server)
    if binary is None:
        sys.exit("redis-server not found (looked for %r)" % args.redis_server)

    table, fixture = generate(binary, args.allow_version)
    outdir = tempfile.mkdtemp(prefix="respguard-gen-out-")
    try:
        fresh = {}
        for path, text in ((TABLE_PATH, table), (FIXTURE_PATH, fixture)):
            tmp = os.path.join(outdir, os.path.basename(path))
            with open(tmp, "w") as f:
                f.write(text)
            rustfmt(tmp)
            with open(tmp) as f:
                fresh[path] = f.read()
        if args.check:
            stale = []
            for path, text in fresh.items():
                try:
                    with open(path) as f:
                        if f.read() == text:
                            continue
                except FileNotFoundError:
                    pass
                stale.append(os.path.relpath(path, ROOT))
            if stale:
                sys.exit("stale generated files: %s" % ", ".join(stale))
            return
        for path, text in fresh.items():
            with open(path, "w") as f:
                f.write(text)
            print("wrote %s" % os.path.relpath(path, ROOT), file=sys.stderr)
    finally:
        shutil.rmtree(outdir, ignore_errors=True)


if __name__ == "__main__":
    main()
