package pgtest_test

import (
	"context"
	"errors"
	"os"
	osexec "os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/cordon-dev/cordon/test/pgtest"
	"github.com/jackc/pgx/v5"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(pgtest.WithShared(m)) }

func query(t *testing.T, url, sql string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return "", err
	}
	defer conn.Close(ctx)
	var s string
	err = conn.QueryRow(ctx, sql).Scan(&s)
	return s, err
}

func exec(t *testing.T, url, sql string) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	_, err = conn.Exec(ctx, sql)
	return err
}

func TestSharedDatabasesAreIsolated(t *testing.T) {
	c := pgtest.Shared(t)
	a, b := c.NewDatabase(t), c.NewDatabase(t)
	if a == b {
		t.Fatalf("got the same database twice: %s", a)
	}
	if _, err := query(t, a, "WITH t AS (SELECT 1) SELECT 'ok'"); err != nil {
		t.Fatal(err)
	}
	if err := exec(t, a, "CREATE TABLE only_in_a (x int)"); err != nil {
		t.Fatal(err)
	}
	n, err := query(t, b, "SELECT count(*)::text FROM pg_tables WHERE tablename = 'only_in_a'")
	if err != nil {
		t.Fatal(err)
	}
	if n != "0" {
		t.Errorf("database b sees %s tables created in a, want 0", n)
	}
	ver, err := query(t, a, "SHOW server_version_num")
	if err != nil {
		t.Fatal(err)
	}
	if ver < "150000" {
		t.Errorf("got server_version_num %s, want >= 150000", ver)
	}
	fsync, err := query(t, b, "SHOW fsync")
	if err != nil {
		t.Fatal(err)
	}
	if fsync != "off" {
		t.Errorf("got fsync %s, want off", fsync)
	}
}

func TestStopStart(t *testing.T) {
	c := pgtest.Start(t)
	url := c.NewDatabase(t)
	if _, err := query(t, url, "SELECT 'up'"); err != nil {
		t.Fatal(err)
	}
	if err := c.Stop(); err != nil {
		t.Fatal(err)
	}
	if _, err := query(t, url, "SELECT 'up'"); err == nil {
		t.Fatal("got a connection to a stopped cluster, want an error")
	}
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	if got, err := query(t, url, "SELECT 'back'"); err != nil || got != "back" {
		t.Fatalf("after restart got %q, %v; want back, nil", got, err)
	}
	c.Close()
	c.Close() // idempotent
}

func TestOrphanedClusterIsSwept(t *testing.T) {
	orphan, err := pgtest.New(pgtest.Options{})
	if errors.Is(err, pgtest.ErrNoPostgres) {
		t.Skip(err.Error())
	}
	if err != nil {
		t.Fatal(err)
	}
	defer orphan.Close()
	// Pretend its owner died: give it the pid of a process that has exited.
	cmd := osexec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(orphan.Dir(), "owner.pid"), []byte(strconv.Itoa(cmd.Process.Pid)), 0o644); err != nil {
		t.Fatal(err)
	}
	next := pgtest.Start(t) // sweeps on start
	_ = next
	if _, err := os.Stat(orphan.Dir()); !os.IsNotExist(err) {
		t.Errorf("orphaned cluster dir still exists (stat: %v), want it removed", err)
	}
	if _, err := query(t, orphan.URL("postgres"), "SELECT 'up'"); err == nil {
		t.Error("orphaned cluster still answers, want it stopped")
	}
}
