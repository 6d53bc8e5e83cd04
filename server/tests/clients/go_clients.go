// Go's Postgres drivers against a running Sluice, as their users use them:
// pgx (v4, Debian's golang-github-jackc-pgx-v4-dev) and lib/pq through
// database/sql (Debian's golang-github-lib-pq-dev), the drivers Grafana's
// PostgreSQL data source has used.
// Run by server/tests/clients.rs, built in GOPATH mode against Debian's
// packaged sources (scripts/infra/clients.sh installs them):
//
//	go run go_clients.go <port>
//
// Every check runs; exits non-zero when any failed, naming it.
package main

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"reflect"
	"time"

	"github.com/jackc/pgconn"
	"github.com/jackc/pgx/v4"
	"github.com/lib/pq"
)

var failed []string

func check(name string, f func() error) {
	if err := f(); err != nil {
		failed = append(failed, name)
		fmt.Printf("FAIL %s\n     %v\n", name, err)
		return
	}
	fmt.Printf("ok   %s\n", name)
}

func want(what string, got, expected interface{}) error {
	if !reflect.DeepEqual(got, expected) {
		return fmt.Errorf("%s: got %#v, want %#v", what, got, expected)
	}
	return nil
}

func main() {
	port := os.Args[1]
	dsn := fmt.Sprintf("postgres://sluice:sluice@127.0.0.1:%s/sluice?sslmode=disable", port)
	ctx := context.Background()

	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		fmt.Printf("FAIL pgx: connect\n     %v\n", err)
		os.Exit(1)
	}
	defer conn.Close(ctx)

	check("pgx: typed parameters (extended protocol, binary results)", func() error {
		var n int64
		var s string
		if err := conn.QueryRow(ctx, "SELECT $1::bigint + 1, upper($2)", int64(41), "go").Scan(&n, &s); err != nil {
			return err
		}
		if err := want("bigint", n, int64(42)); err != nil {
			return err
		}
		return want("text", s, "GO")
	})

	check("pgx: rows of several types and Postgres column names", func() error {
		rows, err := conn.Query(ctx,
			"SELECT id, name, at, ok, count(*) OVER () FROM (VALUES (1, 'a', TIMESTAMPTZ '2026-12-06 10:00:00+00', true), "+
				"(2, 'b', TIMESTAMPTZ '2026-12-06 11:30:00+00', false)) AS t(id, name, at, ok) ORDER BY id")
		if err != nil {
			return err
		}
		defer rows.Close()
		var names []string
		for _, f := range rows.FieldDescriptions() {
			names = append(names, string(f.Name))
		}
		if err := want("columns", names, []string{"id", "name", "at", "ok", "count"}); err != nil {
			return err
		}
		var got []string
		for rows.Next() {
			var id, n int64
			var name string
			var at time.Time
			var ok bool
			if err := rows.Scan(&id, &name, &at, &ok, &n); err != nil {
				return err
			}
			got = append(got, fmt.Sprintf("%d %s %s %v %d", id, name, at.UTC().Format(time.RFC3339), ok, n))
		}
		if err := rows.Err(); err != nil {
			return err
		}
		return want("rows", got, []string{"1 a 2026-12-06T10:00:00Z true 2", "2 b 2026-12-06T11:30:00Z false 2"})
	})

	check("pgx: an array parameter gives the right rows (= ANY($1))", func() error {
		rows, err := conn.Query(ctx,
			"SELECT r FROM (VALUES ('north'), ('east'), ('west')) AS t(r) WHERE r = ANY($1) ORDER BY r",
			[]string{"north", "east"})
		if err != nil {
			return err
		}
		defer rows.Close()
		var got []string
		for rows.Next() {
			var r string
			if err := rows.Scan(&r); err != nil {
				return err
			}
			got = append(got, r)
		}
		if err := rows.Err(); err != nil {
			return err
		}
		return want("rows", got, []string{"east", "north"})
	})

	check("pgx: a NUMERIC literal is exact", func() error {
		var s string
		if err := conn.QueryRow(ctx, "SELECT (0.1 + 0.2)::text").Scan(&s); err != nil {
			return err
		}
		return want("0.1 + 0.2", s, "0.3")
	})

	check("pgx: an error carries its SQLSTATE and the connection goes on", func() error {
		_, err := conn.Exec(ctx, "SELECT * FROM no_such_table")
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) {
			return fmt.Errorf("want a *pgconn.PgError, got %v", err)
		}
		if err := want("SQLSTATE", pgErr.Code, "42P01"); err != nil {
			return err
		}
		var one int32
		if err := conn.QueryRow(ctx, "SELECT 1::int").Scan(&one); err != nil {
			return err
		}
		return want("after the error", one, int32(1))
	})

	db, err := sql.Open("postgres", dsn)
	if err != nil {
		fmt.Printf("FAIL lib/pq: open\n     %v\n", err)
		os.Exit(1)
	}
	defer db.Close()

	check("lib/pq: ping, parameters and database/sql column types (Grafana's sqleng reads them)", func() error {
		if err := db.Ping(); err != nil {
			return err
		}
		rows, err := db.Query("SELECT $1::bigint AS n, 'x'::text AS s, 2.50 AS price, now() AS at", 7)
		if err != nil {
			return err
		}
		defer rows.Close()
		types, err := rows.ColumnTypes()
		if err != nil {
			return err
		}
		var names []string
		for _, t := range types {
			names = append(names, t.DatabaseTypeName())
		}
		if err := want("types", names, []string{"INT8", "TEXT", "NUMERIC", "TIMESTAMPTZ"}); err != nil {
			return err
		}
		if !rows.Next() {
			return fmt.Errorf("no row: %v", rows.Err())
		}
		var n int64
		var s, price string
		var at time.Time
		if err := rows.Scan(&n, &s, &price, &at); err != nil {
			return err
		}
		if time.Since(at) > time.Hour || time.Since(at) < -time.Hour {
			return fmt.Errorf("now() read as %v", at)
		}
		return want("row", fmt.Sprintf("%d %s %s", n, s, price), "7 x 2.50")
	})

	check("lib/pq: pq.Array parameter and an error's SQLSTATE", func() error {
		var c int64
		if err := db.QueryRow("SELECT count(*) FROM (VALUES (1), (2), (3)) AS t(x) WHERE x = ANY($1)",
			pq.Array([]int64{1, 3})).Scan(&c); err != nil {
			return err
		}
		if err := want("count", c, int64(2)); err != nil {
			return err
		}
		_, err := db.Exec("SELECT 1/0")
		var pqErr *pq.Error
		if !errors.As(err, &pqErr) {
			return fmt.Errorf("want a *pq.Error, got %v", err)
		}
		return want("SQLSTATE", string(pqErr.Code), "22012")
	})

	check("lib/pq: a transaction (BEGIN/COMMIT as database/sql sends them)", func() error {
		tx, err := db.Begin()
		if err != nil {
			return err
		}
		var v int64
		if err := tx.QueryRow("SELECT 40 + 2").Scan(&v); err != nil {
			return err
		}
		if err := tx.Commit(); err != nil {
			return err
		}
		return want("value", v, int64(42))
	})

	if len(failed) > 0 {
		fmt.Printf("%d failed: %v\n", len(failed), failed)
		os.Exit(1)
	}
	fmt.Println("0 failed")
}
