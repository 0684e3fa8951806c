#!/usr/bin/env python3
# The queue's hot queries with a lane backlog of 100 and of 10,000 waiting alert notifications:
# the plan SQLite chooses (EXPLAIN QUERY PLAN) and the time per query, before (the queries of
# commit 7b1c263) and now. Used for BENCHMARKS.md ("no cost that grows with the backlog").
# Run: python3 scripts/explain_queue.py (Python's own sqlite3 module, on a scratch file).
import glob, os, sqlite3, tempfile, time, uuid
root = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..')
db = os.path.join(tempfile.mkdtemp(), 'q.db')
c=sqlite3.connect(db)
for f in sorted(glob.glob(os.path.join(root, 'core/migrations/*.sql'))):
    c.executescript(open(f).read())
now=1_000_000
def add(kind, lane, n):
    rows=[(str(uuid.uuid4()),kind,'alertmanager','r','x','{}','ready',0,now+i,now,now,lane) for i in range(n)]
    c.executemany("INSERT INTO requests (id,kind,frontend,room,identity,payload,state,attempts,available_at,created_at,updated_at,lane) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",rows)
c.commit()
old_ready="SELECT r.id FROM requests r WHERE r.state='ready' AND r.available_at <= ? AND r.kind NOT IN ('alert-notification') AND (r.after_id IS NULL OR NOT EXISTS (SELECT 1 FROM requests p WHERE p.id=r.after_id AND p.state IN ('ready','leased'))) ORDER BY r.state, r.available_at, r.id LIMIT 1"
new_ready="SELECT r.id FROM requests r WHERE r.state='ready' AND r.lane IS NULL AND r.available_at <= ? AND (r.after_id IS NULL OR NOT EXISTS (SELECT 1 FROM requests p WHERE p.id=r.after_id AND p.state IN ('ready','leased'))) ORDER BY r.available_at, r.id LIMIT 1"
old_due="SELECT MIN(CASE WHEN state = 'ready' THEN available_at ELSE lease_until END) FROM requests WHERE state IN ('ready','leased')"
new_due1="SELECT MIN(available_at) FROM requests WHERE state='ready' AND lane IS NULL"
new_due2="SELECT MIN(lease_until) FROM requests WHERE state='leased' AND lane IS NULL"
lane="SELECT id FROM requests WHERE kind='alert-notification' AND state IN ('ready','leased') ORDER BY created_at, id LIMIT 256"
for q,name in [(old_ready,'general lease, before'),(new_ready,'general lease, now'),(old_due,'next due, before'),(new_due1,'next due (ready), now'),(new_due2,'next due (leases), now'),(lane,'lane batch')]:
    print(name, ':', [r[3] for r in c.execute('EXPLAIN QUERY PLAN '+q, (now*2,) if '?' in q else ())])
for backlog in (100, 10000):
    c.execute("DELETE FROM requests"); add('alert-notification','alert-notification',backlog); c.commit()
    for q,name in [(old_ready,'general lease, before'),(new_ready,'general lease, now'),(old_due,'next due, before'),(new_due1,'next due (ready), now'),(lane,'lane batch')]:
        args=(now*2,) if '?' in q else ()
        t=time.perf_counter(); 
        for _ in range(200): c.execute(q,args).fetchall()
        print(f"backlog {backlog:>6}: {name:<24} {(time.perf_counter()-t)/200*1e6:9.1f} us")
print('sqlite', sqlite3.sqlite_version)
