// pgjdbc (Debian's libpostgresql-jdbc-java) against a running Sluice, as a
// Java program or a BI tool uses it. Run by server/tests/clients.rs:
//   java -cp /usr/share/java/postgresql.jar JdbcClient.java <port>
// Every check runs; prints each result and "N failed"; exits non-zero when
// any failed.
import java.math.BigDecimal;
import java.sql.*;
import java.util.*;

public class JdbcClient {
    static int failed = 0;
    static List<String> failures = new ArrayList<>();

    interface Check { void run(Connection c) throws Exception; }

    static void check(String name, Connection c, Check f) {
        try {
            f.run(c);
            System.out.println("ok   " + name);
        } catch (Throwable e) {
            failed++;
            failures.add(name);
            System.out.println("FAIL " + name + ": " + e);
        }
    }

    static int count(ResultSet r) throws SQLException {
        int n = 0;
        try (r) {
            while (r.next()) n++;
        }
        return n;
    }

    static void eq(Object got, Object want) {
        if (!Objects.equals(got, want)) throw new AssertionError("got " + got + ", want " + want);
    }

    public static void main(String[] args) throws Exception {
        String url = "jdbc:postgresql://127.0.0.1:" + args[0] + "/sluice";
        try (Connection c = DriverManager.getConnection(url, "sluice", "sluice")) {
            check("connect: server version and isolation level", c, x -> {
                DatabaseMetaData md = x.getMetaData();
                eq(md.getDatabaseProductName(), "PostgreSQL");
                eq(md.getDatabaseMajorVersion(), 15);
                eq(x.getTransactionIsolation(), Connection.TRANSACTION_READ_COMMITTED);
            });
            check("create a table and query it with a prepared statement", c, x -> {
                try (Statement s = x.createStatement()) {
                    s.execute("CREATE EXTERNAL TABLE jdbc_t (id BIGINT, name VARCHAR, amount DECIMAL(10,2)) "
                        + "STORED AS PARQUET LOCATION '" + args[1] + "/'");
                    s.execute("INSERT INTO jdbc_t VALUES (1, 'one', 1.50), (2, 'two', 2.25), (3, NULL, NULL)");
                }
                try (PreparedStatement p = x.prepareStatement("SELECT id, name, amount FROM jdbc_t WHERE id >= ? ORDER BY id")) {
                    p.setLong(1, 2);
                    try (ResultSet r = p.executeQuery()) {
                        r.next();
                        eq(r.getLong("id"), 2L);
                        eq(r.getString("name"), "two");
                        eq(r.getBigDecimal("amount"), new BigDecimal("2.25"));
                        r.next();
                        eq(r.getString("name"), null);
                        eq(r.next(), false);
                    }
                }
            });
            check("interval, jsonb, timestamp, date, numeric and array columns", c, x -> {
                try (Statement s = x.createStatement();
                     ResultSet r = s.executeQuery("SELECT INTERVAL '1 day 2 hours' AS i, '{\"a\": 1}'::jsonb AS j, "
                         + "TIMESTAMP '2026-12-06 10:11:12' AS ts, DATE '2026-12-06' AS d, 0.1 + 0.2 AS n, "
                         + "make_array(1, 2, 3) AS arr")) {
                    r.next();
                    eq(r.getString("i"), "1 day 02:00:00");
                    eq(r.getString("j"), "{\"a\": 1}");
                    eq(r.getTimestamp("ts"), Timestamp.valueOf("2026-12-06 10:11:12"));
                    eq(r.getDate("d").toString(), "2026-12-06");
                    eq(r.getBigDecimal("n"), new BigDecimal("0.3"));
                    Object[] arr = (Object[]) r.getArray("arr").getArray();
                    eq(Arrays.asList(arr).toString(), "[1, 2, 3]");
                    ResultSetMetaData m = r.getMetaData();
                    eq(m.getColumnTypeName(1), "interval");
                    eq(m.getColumnTypeName(2), "jsonb");
                }
            });
            check("DatabaseMetaData: getTables, getColumns", c, x -> {
                DatabaseMetaData md = x.getMetaData();
                List<String> tables = new ArrayList<>();
                try (ResultSet r = md.getTables(null, "public", "%", new String[] {"TABLE"})) {
                    while (r.next()) tables.add(r.getString("TABLE_NAME"));
                }
                if (!tables.contains("jdbc_t")) throw new AssertionError("getTables: " + tables);
                List<String> cols = new ArrayList<>();
                try (ResultSet r = md.getColumns(null, "public", "jdbc_t", "%")) {
                    while (r.next()) cols.add(r.getString("COLUMN_NAME") + ":" + r.getString("TYPE_NAME"));
                }
                eq(cols.toString(), "[id:int8, name:text, amount:numeric]");
            });
            check("the metadata BI tools read at sync (DBeaver, Metabase): keys, indexes, types, procedures", c, x -> {
                DatabaseMetaData md = x.getMetaData();
                // Sluice has no keys or indexes: empty answers, not errors.
                eq(count(md.getPrimaryKeys(null, "public", "jdbc_t")), 0);
                eq(count(md.getImportedKeys(null, "public", "jdbc_t")), 0);
                eq(count(md.getExportedKeys(null, "public", "jdbc_t")), 0);
                eq(count(md.getIndexInfo(null, "public", "jdbc_t", false, true)), 0);
                eq(count(md.getBestRowIdentifier(null, "public", "jdbc_t", DatabaseMetaData.bestRowSession, true)), 0);
                List<String> types = new ArrayList<>();
                try (ResultSet r = md.getTypeInfo()) {
                    while (r.next()) types.add(r.getString("TYPE_NAME"));
                }
                for (String t : new String[] {"int8", "text", "numeric", "timestamp", "jsonb", "interval"}) {
                    if (!types.contains(t)) throw new AssertionError("getTypeInfo lacks " + t + ": " + types);
                }
                // pgjdbc lists only procedures (prokind 'p') here; Sluice has
                // none. The query used to fail on its duplicate NULL columns.
                eq(count(md.getProcedures(null, "public", "%")), 0);
                eq(count(md.getSchemas(null, "public")), 1);
                eq(count(md.getCatalogs()), 1);
                if (count(md.getTableTypes()) == 0) throw new AssertionError("getTableTypes: none");
            });
            check("an error keeps the connection usable, with its SQLSTATE", c, x -> {
                try (Statement s = x.createStatement()) {
                    try {
                        s.executeQuery("SELECT * FROM no_such_table");
                        throw new AssertionError("no error");
                    } catch (SQLException e) {
                        eq(e.getSQLState(), "42P01");
                    }
                    try (ResultSet r = s.executeQuery("SELECT 1")) {
                        r.next();
                        eq(r.getInt(1), 1);
                    }
                }
            });
        }
        System.out.println(failed + " failed" + (failed > 0 ? ": " + String.join("; ", failures) : ""));
        System.exit(failed > 0 ? 1 : 0);
    }
}
