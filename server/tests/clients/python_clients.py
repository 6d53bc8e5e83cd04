"""Postgres client libraries against a running Sluice, as their users use them.

Run by server/tests/clients.rs with the venv scripts/infra/clients.sh makes:
    python python_clients.py <port> <table dir>
Every check runs; the script prints each result and exits non-zero when any
check failed, naming it.
"""
import asyncio
import datetime
import decimal
import sys
import traceback

PORT = int(sys.argv[1])
TABLE_DIR = sys.argv[2]
DSN = f"host=127.0.0.1 port={PORT} user=sluice password=sluice dbname=sluice"
URL = f"sluice:sluice@127.0.0.1:{PORT}/sluice"

failed = []


def check(name):
    def run(f):
        try:
            f()
            print(f"ok   {name}")
        except Exception:
            failed.append(name)
            print(f"FAIL {name}")
            traceback.print_exc(file=sys.stdout)
        return f

    return run


def eq(got, want):
    assert got == want, f"got {got!r}, want {want!r}"


import psycopg  # noqa: E402


@check("psycopg: decimal literals are exact NUMERIC")
def _():
    with psycopg.connect(DSN) as c:
        eq(c.execute("SELECT 0.1 + 0.2, 0.908 * 1000").fetchone(), (decimal.Decimal("0.3"), decimal.Decimal("908.000")))
        eq(c.execute("SELECT pg_typeof(0.5)").fetchone()[0], "numeric")
        # Division keeps Postgres's digits (str: the scale shows).
        eq(str(c.execute("SELECT 1.0 / 3").fetchone()[0]), "0.33333333333333333333")
        eq(str(c.execute("SELECT %s / 4.0", (decimal.Decimal("10"),)).fetchone()[0]), "2.5000000000000000")


setup = psycopg.connect(DSN, autocommit=True)
setup.execute(
    f"CREATE EXTERNAL TABLE trips STORED AS PARQUET PARTITIONED BY (dt) LOCATION '{TABLE_DIR}/'"
)


@check("psycopg: version() reads as a Postgres version")
def _():
    with psycopg.connect(DSN) as c:
        v = c.execute("SELECT version()").fetchone()[0]
        assert v.startswith("PostgreSQL 15.0 (Sluice "), v
        eq(c.info.server_version, 150000)


@check("psycopg: SHOW TRANSACTION ISOLATION LEVEL, current_setting, current_user")
def _():
    with psycopg.connect(DSN) as c:
        eq(c.execute("SHOW TRANSACTION ISOLATION LEVEL").fetchone()[0], "read committed")
        eq(c.execute("SELECT current_setting('server_version_num')").fetchone()[0], "150000")
        c.execute("SET application_name = 'clients-test'")
        eq(c.execute("SELECT current_setting('application_name')").fetchone()[0], "clients-test")
        eq(c.execute("SELECT current_user").fetchone()[0], "sluice")
        eq(c.execute("SELECT session_user").fetchone()[0], "sluice")
        cur = c.execute("SELECT current_user, session_user, current_role")
        eq([d.name for d in cur.description], ["current_user", "session_user", "current_role"])
        eq(cur.fetchone(), ("sluice", "sluice", "sluice"))


@check("psycopg: unaliased columns are named as Postgres names them")
def _():
    with psycopg.connect(DSN) as c:
        cur = c.execute("SELECT count(*), avg(fare), 1, dt, 'x'::text FROM trips GROUP BY dt ORDER BY dt")
        eq([d.name for d in cur.description], ["count", "avg", "?column?", "dt", "text"])
        eq(cur.fetchone()[0], 2)


@check("psycopg: pg_typeof and gen_random_uuid")
def _():
    with psycopg.connect(DSN) as c:
        eq(c.execute("SELECT pg_typeof(1), pg_typeof('a'::text), pg_typeof(now())").fetchone(),
           ("bigint", "text", "timestamp with time zone"))
        u = c.execute("SELECT gen_random_uuid()").fetchone()[0]
        assert len(str(u)) == 36, u


@check("psycopg: COPY (SELECT ...) TO STDOUT, text and CSV")
def _():
    with psycopg.connect(DSN) as c:
        with c.cursor().copy("COPY (SELECT id, dt FROM trips ORDER BY id) TO STDOUT") as copy:
            rows = list(copy.rows())
        eq(rows, [("1", "2026-11-01"), ("2", "2026-11-01"), ("3", "2026-11-02")])
        with c.cursor().copy("COPY (SELECT id FROM trips ORDER BY id) TO STDOUT WITH (FORMAT csv, HEADER)") as copy:
            out = b"".join(bytes(b) for b in copy)
        eq(out, b"id\n1\n2\n3\n")


@check("psycopg2: copy_expert to a file object")
def _():
    import io
    import psycopg2
    c = psycopg2.connect(DSN)
    try:
        buf = io.StringIO()
        c.cursor().copy_expert("COPY (SELECT dt, count(*) FROM trips GROUP BY dt ORDER BY dt) TO STDOUT WITH CSV HEADER", buf)
        eq(buf.getvalue(), "dt,count\n2026-11-01,2\n2026-11-02,1\n")
    finally:
        c.close()


@check("psycopg and psycopg2: named (server-side) cursors fetch in steps")
def _():
    with psycopg.connect(DSN) as c:
        with c.cursor(name="trip_ids") as cur:
            cur.itersize = 2
            cur.execute("SELECT id, dt FROM trips ORDER BY id")
            eq(cur.fetchmany(2), [(1, "2026-11-01"), (2, "2026-11-01")])
            eq(cur.fetchall(), [(3, "2026-11-02")])
    import psycopg2
    c2 = psycopg2.connect(DSN)
    try:
        cur = c2.cursor(name="trip_fares")
        cur.itersize = 1
        cur.execute("SELECT id FROM trips ORDER BY id")
        eq([r[0] for r in cur], [1, 2, 3])
        cur.close()
        c2.commit()
    finally:
        c2.close()


@check("psycopg and psycopg2: scrollable named cursors move back and to a row (scroll, MOVE)")
def _():
    with psycopg.connect(DSN) as c:
        with c.cursor(name="trip_scroll", scrollable=True) as cur:
            cur.execute("SELECT id FROM trips ORDER BY id")
            eq(cur.fetchmany(2), [(1,), (2,)])
            cur.scroll(-2)  # MOVE -2 FROM ...
            eq(cur.fetchone(), (1,))
            cur.scroll(2, mode="absolute")  # MOVE ABSOLUTE 2 FROM ...
            eq(cur.fetchall(), [(3,)])
            cur.scroll(0, mode="absolute")
            eq(cur.fetchall(), [(1,), (2,), (3,)])
        # Without scrollable=True, psycopg declares NO SCROLL: moving back fails as in Postgres.
        with c.cursor(name="trip_forward", scrollable=False) as cur:
            cur.execute("SELECT id FROM trips ORDER BY id")
            eq(cur.fetchone(), (1,))
            try:
                cur.scroll(-1)
                raise AssertionError("a NO SCROLL cursor moved back")
            except psycopg.errors.ObjectNotInPrerequisiteState:
                pass
    import psycopg2
    c2 = psycopg2.connect(DSN)
    try:
        cur = c2.cursor(name="trip_scroll2", scrollable=True)
        cur.execute("SELECT id FROM trips ORDER BY id")
        eq(cur.fetchall(), [(1,), (2,), (3,)])
        cur.scroll(1, mode="absolute")
        eq(cur.fetchone(), (2,))
        cur.close()
        c2.commit()
    finally:
        c2.close()


import sqlalchemy as sa  # noqa: E402

for driver in ["psycopg", "psycopg2"]:

    @check(f"SQLAlchemy ({driver}): connect, Core query, text query")
    def _():
        engine = sa.create_engine(f"postgresql+{driver}://{URL}")
        with engine.connect() as conn:
            eq(conn.dialect.server_version_info[:2], (15, 0))
            rows = conn.execute(sa.text("SELECT dt, count(*) AS n FROM trips GROUP BY dt ORDER BY dt")).all()
            eq([(str(r.dt), r.n) for r in rows], [("2026-11-01", 2), ("2026-11-02", 1)])
            # An int and a float parameter against a NUMERIC column.
            for f in [10, 10.0]:
                row = conn.execute(sa.text("SELECT count(*) FROM trips WHERE fare > :f"), {"f": f}).mappings().one()
                eq(dict(row), {"count": 2})
        engine.dispose()


    @check(f"SQLAlchemy ({driver}): reflection (inspect, Table(autoload_with=)), Core and ORM on it")
    def _():
        from sqlalchemy.orm import Session
        from sqlalchemy.ext.automap import automap_base

        engine = sa.create_engine(f"postgresql+{driver}://{URL}")
        insp = sa.inspect(engine)
        assert "trips" in insp.get_table_names(), insp.get_table_names()
        assert insp.has_table("trips") and not insp.has_table("no_such_table")
        cols = {c["name"]: c for c in insp.get_columns("trips")}
        eq(sorted(cols), ["dt", "fare", "id"])
        eq(type(cols["id"]["type"]), sa.BIGINT)
        # Sluice has no keys or indexes: empty answers, not errors.
        eq(insp.get_pk_constraint("trips")["constrained_columns"], [])
        eq(insp.get_indexes("trips"), [])
        eq(insp.get_foreign_keys("trips"), [])
        trips = sa.Table("trips", sa.MetaData(), autoload_with=engine)
        eq(sorted(trips.c.keys()), ["dt", "fare", "id"])
        with engine.connect() as conn:
            rows = conn.execute(sa.select(trips.c.id).where(trips.c.fare > 10).order_by(trips.c.id)).all()
            eq([r.id for r in rows], [1, 2])
        # The ORM over the reflected table (automap needs a primary key:
        # name one, as users of key-less tables do).
        Base = automap_base()
        sa.Table("trips", Base.metadata, sa.Column("id", sa.BigInteger, primary_key=True), autoload_with=engine)
        Base.prepare()
        Trip = Base.classes.trips
        with Session(engine) as s:
            eq([t.id for t in s.query(Trip).filter(Trip.fare < 10)], [3])
        engine.dispose()


import pandas as pd  # noqa: E402


@check("pandas: read_sql_table reflects the table")
def _():
    engine = sa.create_engine(f"postgresql+psycopg://{URL}")
    df = pd.read_sql_table("trips", engine)
    eq(sorted(df.columns), ["dt", "fare", "id"])
    eq(sorted(df["id"].tolist()), [1, 2, 3])
    engine.dispose()


@check("pandas: read_sql through a SQLAlchemy engine")
def _():
    engine = sa.create_engine(f"postgresql+psycopg://{URL}")
    df = pd.read_sql("SELECT dt, count(*), sum(fare) FROM trips GROUP BY dt ORDER BY dt", engine)
    eq(list(df.columns), ["dt", "count", "sum"])
    eq(int(df["count"].sum()), 3)
    engine.dispose()


import asyncpg  # noqa: E402


@check("asyncpg: connect, query, a typed parameter")
def _():
    async def go():
        c = await asyncpg.connect(host="127.0.0.1", port=PORT, user="sluice", password="sluice", database="sluice")
        try:
            rows = await c.fetch("SELECT dt, count(*) FROM trips GROUP BY dt ORDER BY dt")
            eq([r["count"] for r in rows], [2, 1])
            eq(await c.fetchval("SELECT count(*) FROM trips WHERE id > $1", 1), 2)
        finally:
            await c.close()

    asyncio.run(go())


@check("asyncpg: NUMERIC parameters (sent in binary) and numeric division")
def _():
    async def go():
        c = await asyncpg.connect(host="127.0.0.1", port=PORT, user="sluice", password="sluice", database="sluice")
        try:
            eq(str(await c.fetchval("SELECT 1.0 / $1", decimal.Decimal("3"))), "0.33333333333333333333")
            eq(await c.fetchval("SELECT $1::numeric + 1", decimal.Decimal("-123.45678")), decimal.Decimal("-122.45678"))
            eq(await c.fetchval("SELECT 1.0 / $1", decimal.Decimal("0.001")), decimal.Decimal("1000"))
        finally:
            await c.close()

    asyncio.run(go())


@check("a parameter cast to oid[] is described as oid[] (1028) and read in text and binary")
def _():
    with psycopg.connect(DSN, autocommit=True) as c:
        sql = b"SELECT count(*) FROM pg_catalog.pg_type t WHERE t.oid = any($1::oid[])"
        c.pgconn.prepare(b"oids", sql)
        described = c.pgconn.describe_prepared(b"oids")
        eq(described.param_type(0), 1028)
        # %s sends the list as text, %b in binary.
        for placeholder in ("%s", "%b"):
            q = f"SELECT count(*) FROM pg_catalog.pg_type t WHERE t.oid = any({placeholder}::oid[])"
            eq(c.execute(q, ([20, 1016],)).fetchone()[0], 2)


@check("asyncpg: int8[], float8[], int4[], date[] and oid[] results (through its type introspection); date[], timestamp[], numeric[] parameters")
def _():
    async def go():
        c = await asyncpg.connect(host="127.0.0.1", port=PORT, user="sluice", password="sluice", database="sluice")
        try:
            # asyncpg reads only text[] and oid[] without asking the server;
            # any other array type it introspects with a recursive catalog
            # query that returns an oid[] column (array_agg(atttypid)).
            eq(await c.fetchval("SELECT ARRAY[1::bigint, NULL, 3]"), [1, None, 3])
            eq(await c.fetchval("SELECT ARRAY[1.5::float8, -2]"), [1.5, -2.0])
            eq(await c.fetchval("SELECT array_agg(id ORDER BY id) FROM trips"), [1, 2, 3])
            eq(await c.fetchval("SELECT ARRAY[DATE '2026-01-02']"), [datetime.date(2026, 1, 2)])
            eq(await c.fetchval("SELECT array_agg(oid ORDER BY oid) FROM pg_type WHERE oid IN (16, 20, 25)"), [16, 20, 25])
            # Parameters of array types (asyncpg sends them in binary).
            eq(await c.fetchval("SELECT count(*) FROM trips WHERE id = any($1::bigint[])", [1, 3]), 2)
            day = datetime.date(2026, 11, 1)
            eq(await c.fetchval("SELECT $1::date[]", [day, None]), [day, None])
            eq(await c.fetchval("SELECT count(*) FROM trips WHERE CAST(dt AS DATE) = any($1::date[])", [day]), 2)
            at = datetime.datetime(2026, 1, 2, 3, 4, 5, 678000)
            eq(await c.fetchval("SELECT $1::timestamp[]", [at]), [at])
            eq(await c.fetchval("SELECT $1::numeric[]", [decimal.Decimal("1.5")]), [decimal.Decimal("1.5")])
        finally:
            await c.close()

    asyncio.run(go())


@check("asyncpg: a pool hands connections back and resets them")
def _():
    async def go():
        pool = await asyncpg.create_pool(
            host="127.0.0.1", port=PORT, user="sluice", password="sluice", database="sluice", min_size=1, max_size=1
        )
        try:
            # One connection, used three times: each release runs asyncpg's
            # reset (pg_advisory_unlock_all(), CLOSE ALL, UNLISTEN *, RESET ALL).
            for i in range(3):
                async with pool.acquire() as c:
                    eq(await c.fetchval("SELECT current_setting('application_name')"), "")
                    await c.execute(f"SET application_name = 'pooled-{i}'")
                    eq(await c.fetchval("SELECT count(*) FROM trips WHERE id >= $1", 2), 2)
        finally:
            await pool.close()

    asyncio.run(go())


@check("pgcli: its startup refresh loads tables, columns and functions for completion")
def _():
    from pgcli.completion_refresher import CompletionRefresher
    from pgcli.pgcompleter import PGCompleter
    from pgcli.pgexecute import PGExecute
    from prompt_toolkit.document import Document

    executor = PGExecute("sluice", "sluice", "sluice", "127.0.0.1", PORT, "")
    completer = PGCompleter(smart_completion=True)
    # Every refresher pgcli runs at startup, in its order (an exception in
    # one stops pgcli's refresh).
    for _name, refresh in CompletionRefresher.refreshers.items():
        refresh(completer, executor)
    eq(list(completer.dbmetadata["tables"]["public"]["trips"].keys()), ["id", "fare", "dt"])
    assert "format_type" in completer.dbmetadata["functions"]["pg_catalog"]
    texts = [c.text for c in completer.get_completions(Document("SELECT * FROM trip"), None)]
    assert "trips" in texts, texts
    texts = [c.text for c in completer.get_completions(Document("SELECT * FROM trips WHERE fa"), None)]
    assert "fare" in texts, texts


# Last: these add rows to trips, which the checks above count.
@check("psycopg: COPY ... FROM STDIN, rows and CSV; a bad row writes nothing")
def _():
    with psycopg.connect(DSN, autocommit=True) as c:
        with c.cursor() as cur:
            with cur.copy("COPY trips (id, fare, dt) FROM STDIN") as cp:
                cp.write_row((100, decimal.Decimal("1.5"), "2026-12-01"))
                cp.write_row((101, decimal.Decimal("2.5"), "2026-12-01"))
            eq(cur.rowcount, 2)
            with cur.copy("COPY trips FROM STDIN WITH (FORMAT csv, HEADER)") as cp:
                cp.write("id,fare,dt\n102,3.5,2026-12-02\n")
        eq(c.execute("SELECT count(*) FROM trips WHERE id >= 100").fetchone()[0], 3)
        eq(c.execute("SELECT fare FROM trips WHERE id = 101").fetchone()[0], decimal.Decimal("2.5"))
        try:
            with c.cursor().copy("COPY trips FROM STDIN") as cp:
                cp.write("103\t1.0\t2026-12-03\n104\tnot-a-number\t2026-12-03\n")
            raise AssertionError("a bad row was accepted")
        except psycopg.errors.InvalidTextRepresentation:
            pass
        eq(c.execute("SELECT count(*) FROM trips WHERE id >= 100").fetchone()[0], 3)


@check("psycopg2: copy_expert FROM STDIN")
def _():
    import io

    import psycopg2

    c2 = psycopg2.connect(DSN)
    c2.autocommit = True
    try:
        cur = c2.cursor()
        cur.copy_expert("COPY trips FROM STDIN WITH CSV", io.StringIO("105,4.5,2026-12-02\n106,5.5,2026-12-02\n"))
        eq(cur.rowcount, 2)
        cur.execute("SELECT count(*) FROM trips WHERE id >= 105")
        eq(cur.fetchone()[0], 2)
    finally:
        c2.close()


REPLAY = __import__("pathlib").Path(__file__).parent / "replay"


@check("replayed: Npgsql's type loading at connect (one batch: version, types, composite fields, enum labels)")
def _():
    batch = (REPLAY / "npgsql_load_types.sql").read_text()
    with psycopg.connect(DSN, autocommit=True) as c:
        cur = c.cursor()
        # Several statements and no parameters: one simple query, as Npgsql sends it.
        cur.execute(batch)
        results = []
        while True:
            results.append(([d.name for d in cur.description or []], cur.fetchall()))
            if not cur.nextset():
                break
    eq(len(results), 4)
    assert results[0][1][0][0].startswith("PostgreSQL 15.0"), results[0]
    eq(results[1][0], ["nspname", "oid", "typname", "typtype", "typnotnull", "elemtypoid"])
    seen = {}
    for nspname, oid, typname, typtype, typnotnull, elemtypoid in results[1][1]:
        assert nspname and int(oid) > 0 and typname, (nspname, oid, typname)
        assert typtype in ("b", "a", "r", "m", "e", "d", "c", "p"), (typname, typtype)
        assert isinstance(typnotnull, bool), (typname, typnotnull)
        if typtype == "a":
            # Npgsql resolves an array's element among the types read before it.
            assert elemtypoid is not None and int(elemtypoid) in seen, (typname, elemtypoid)
        seen[int(oid)] = (typname, typtype)
    names = {n: t for n, t in seen.values()}
    for base in ("bool", "int4", "int8", "float8", "numeric", "text", "timestamptz", "date", "interval", "jsonb", "uuid"):
        eq((base, names.get(base)), (base, "b"))
    for array in ("_int4", "_int8", "_text", "_float8", "_timestamptz"):
        eq((array, names.get(array)), (array, "a"))
    eq(results[2][0], ["oid", "attname", "atttypid"])
    eq(results[3][0], ["oid", "enumlabel"])


@check("replayed: Grafana's PostgreSQL data source (version, schemas, table picker, column picker)")
def _():
    statements = [
        s for s in (REPLAY / "grafana.sql").read_text().split(";")
        if s.strip() and not all(line.strip().startswith("--") or not line.strip() for line in s.splitlines())
    ]
    version, timescale, schemas, tables, public_tables, columns = statements
    with psycopg.connect(DSN, autocommit=True) as c:
        eq(c.execute(version).fetchall(), [(1500,)])
        eq(c.execute(timescale).fetchall(), [])
        assert ("public",) in c.execute(schemas).fetchall()
        listed = [r[0] for r in c.execute(tables).fetchall()]
        # public is on the search path: its tables are listed unqualified, first.
        assert "trips" in listed and "public.trips" not in listed, listed
        assert ("trips",) in c.execute(public_tables).fetchall()
        for name in ("trips", "public.trips"):
            got = sorted(c.execute(columns.replace(":table", "'" + name + "'")).fetchall())
            eq((name, got), (name, [("dt", "text"), ("fare", "numeric"), ("id", "bigint")]))


@check("replayed: DBeaver's connect, type cache, schema's tables and table's columns")
def _():
    statements = [
        s for s in (REPLAY / "dbeaver.sql").read_text().split(";\n")
        if s.strip() and not all(line.strip().startswith("--") or not line.strip() for line in s.splitlines())
    ]
    eq(len(statements), 17)
    with psycopg.connect(DSN, autocommit=True) as c:
        results = {}
        for sql in statements:
            sql = sql.replace(":namespace", str(results.get("namespace")))
            sql = sql.replace(":table", str(results.get("table")))
            cur = c.execute(sql)
            rows = cur.fetchall() if cur.description else []
            names = [d.name for d in cur.description or []]
            if "pg_namespace n" in sql and "nspname = ANY" not in sql:
                spaces = {r[names.index("nspname")]: r[0] for r in rows}
                assert "public" in spaces and "pg_catalog" in spaces, spaces
                results["namespace"] = spaces["public"]
            elif "pg_type t" in sql and "base_type_name" in sql:
                types = {r[names.index("typname")] for r in rows}
                assert {"int8", "text", "timestamptz", "_int4"} <= types, len(types)
            elif "partition_expr" in sql:
                tables = {r[names.index("relname")]: r[0] for r in rows}
                assert "trips" in tables, tables
                results["table"] = tables["trips"]
            elif "def_value" in sql:
                eq([(r[names.index("relname")], r[names.index("attname")]) for r in rows],
                   [("trips", "id"), ("trips", "fare"), ("trips", "dt")])
            elif sql.startswith("SELECT version()"):
                assert rows[0][0].startswith("PostgreSQL "), rows
            elif "pg_get_keywords" in sql:
                assert "select" in rows[0][0].split(","), rows
            elif sql.startswith("SELECT current_schema()"):
                eq(rows, [("public", "sluice")])
        eq(sorted(results), ["namespace", "table"])


@check("replayed: Metabase's connect and sync (schemas, readable tables, tables with their kind)")
def _():
    statements = [
        s for s in (REPLAY / "metabase.sql").read_text().split(";\n")
        if s.strip() and not all(line.strip().startswith("--") or not line.strip() for line in s.splitlines())
    ]
    eq(len(statements), 9)
    with psycopg.connect(DSN, autocommit=True) as c:
        answers = []
        for sql in statements:
            cur = c.execute(sql)
            answers.append(([d.name for d in cur.description or []], cur.fetchall() if cur.description else None))
    eq(answers[2][1], [("read committed",)])
    assert ("public", "sluice") in answers[4][1], answers[4]
    names, rows = answers[5]
    readable = {r[names.index("table")]: r[names.index("select")] for r in rows}
    eq(readable.get("trips"), True)
    names, rows = answers[6]
    kinds = {r[names.index("name")]: r[names.index("type")] for r in rows}
    eq(kinds.get("trips"), "TABLE")
    eq(len(answers[8][1]), 1)


@check("information_schema.columns speaks Postgres: type names, udt_name, positions from 1")
def _():
    with psycopg.connect(DSN, autocommit=True) as c:
        got = c.execute(
            "SELECT column_name, ordinal_position, data_type, udt_name, numeric_precision, is_nullable "
            "FROM information_schema.columns WHERE table_name = 'trips' ORDER BY ordinal_position"
        ).fetchall()
        eq([r[:4] for r in got], [("id", 1, "bigint", "int8"), ("fare", 2, "numeric", "numeric"), ("dt", 3, "text", "text")])
        eq(got[0][4], 64)
        eq(c.execute("SELECT count(*) FROM information_schema.table_constraints WHERE table_name = 'trips'").fetchone(), (0,))
        eq(c.execute("SELECT count(*) FROM information_schema.key_column_usage WHERE table_name = 'trips'").fetchone(), (0,))


setup.close()
print(f"{len(failed)} failed" + (": " + "; ".join(failed) if failed else ""))
sys.exit(1 if failed else 0)
