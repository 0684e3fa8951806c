#!/usr/bin/env python3
# Which b-trees an alert notification's life writes to SQLite's log, page by page. It replays the
# statements of shepherd's alert path in writer turns as the SQLite writer's thread runs them
# (each turn: 3 notifications stored, the previous turn's leased by the lane, the turn before's
# finished with its line in the outbox, lines marked sending and delivered), on a scratch file
# with core/migrations applied, then reads the page number of every frame in the WAL and names
# its b-tree (the dbstat table). Used for BENCHMARKS.md ("why the misses stand"): ~9 pages per
# notification, of them ~1.4 each in the random-key dedup indexes of requests and alert_notices.
# Run: python3 scripts/wal_pages.py [turns]  (Python's own sqlite3 module, with dbstat).
import collections, glob, hashlib, os, sqlite3, struct, sys, tempfile, time, uuid

root = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..')
warm = int(sys.argv[1]) if len(sys.argv) > 1 else 3000  # turns before the measured ones
measured, per = 200, 3
db = os.path.join(tempfile.mkdtemp(), 'wal.db')
c = sqlite3.connect(db, isolation_level=None)
c.execute("PRAGMA journal_mode=WAL")
c.execute("PRAGMA wal_autocheckpoint=0")
for f in sorted(glob.glob(os.path.join(root, 'core/migrations/*.sql'))):
    c.executescript(open(f).read())
payload = '{"x":"' + "a" * 1600 + '"}'  # a notification of one alert is ~1.6 KB
seq = 0


def new_id():  # time-ordered, like the UUIDv7 ids
    global seq
    seq += 1
    return "%016x-%s" % (int(time.time() * 1000) * 1000 + seq, uuid.uuid4().hex[:16])


stored, leased, sending = [], [], []


def turn():
    global stored, leased, sending
    now = int(time.time() * 1000)
    c.execute("BEGIN IMMEDIATE")
    new = []
    for _ in range(per):
        rid = new_id()
        c.execute("INSERT INTO requests (id, kind, frontend, room, addressee, identity, payload, dedup_key, "
                  "state, attempts, available_at, created_at, updated_at, after_id, lane) "
                  "VALUES (?,?,?,?,?,?,?,?,'ready',0,?,?,?,NULL,?) ON CONFLICT (dedup_key) DO NOTHING",
                  (rid, 'alert-notification', 'alertmanager', 'irc', '', 'alertmanager:irc', payload,
                   'alertmanager:' + hashlib.sha256(rid.encode()).hexdigest()[:32], now, now, now,
                   'alert-notification'))
        new.append(rid)
    for rid in stored:
        c.execute("UPDATE requests SET state='leased', lease_owner='w', lease_until=?, attempts=attempts+1, "
                  "updated_at=? WHERE id=? AND state='ready'", (now + 5000, now, rid))
    lines = []
    for rid in leased:
        c.execute("INSERT INTO alert_notices (key, shown_at) VALUES (?, ?) ON CONFLICT (key) DO UPDATE "
                  "SET shown_at = ? WHERE alert_notices.shown_at < ?",
                  (hashlib.sha256(b'k' + rid.encode()).hexdigest(), now, now, now - 1000))
        oid = new_id()
        c.execute("INSERT INTO outbox (id, frontend, room, addressee, body, dedup_key, request_id, created_at) "
                  "VALUES (?,?,?,?,?,?,?,?) ON CONFLICT (dedup_key) DO NOTHING",
                  (oid, 'irc', '#alerts', '', 'FIRING [1] SomeAlert on host-%s: a line of alert text' % rid[:6],
                   'alert:%s:irc:#alerts:0' % rid, rid, now))
        c.execute("UPDATE requests SET state='done', lease_owner=NULL, lease_until=NULL, updated_at=? "
                  "WHERE id=? AND state='leased'", (now, rid))
        lines.append(oid)
    for oid in sending:
        c.execute("UPDATE outbox SET delivered_at=? WHERE id=?", (now, oid))
    for oid in lines:
        c.execute("UPDATE outbox SET send_started_at=? WHERE id=?", (now, oid))
    c.execute("COMMIT")
    sending, leased, stored = lines, stored, new


for _ in range(warm):
    turn()
c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
for _ in range(measured):
    turn()
owner = dict(c.execute("SELECT pageno, name FROM dbstat").fetchall())
data = open(db + "-wal", "rb").read()
pages = collections.Counter()
frame = 32  # the WAL header; then a 24-byte header and a page per frame
while frame + 24 <= len(data):
    pages[owner.get(struct.unpack(">I", data[frame:frame + 4])[0], "?")] += 1
    frame += 24 + 4096
total = sum(pages.values())
print("%d turns of %d notifications after %d: %.2f pages per turn, %.2f per notification"
      % (measured, per, warm, total / measured, total / measured / per))
for name, n in pages.most_common():
    print("  %-36s %.2f per notification" % (name, n / measured / per))
