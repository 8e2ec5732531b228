package auditstore

import (
	"bytes"
	"context"
	"slices"
	"testing"
	"time"

	"github.com/cordon-dev/cordon/test/pgtest"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
)

// TestWireArraysRoundTrip sends every kind of column the audit INSERT
// builds by hand to Postgres and reads it back through pgx's own decoding:
// the hand-written binary format must mean to Postgres exactly what the Go
// values do, including NULLs, empty strings, multi-byte text, dates and
// timestamps on either side of 2000-01-01, and empty arrays.
func TestWireArraysRoundTrip(t *testing.T) {
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, pgtest.Shared(t).NewDatabase(t))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if err := registerWireArrays(conn); err != nil {
		t.Fatal(err)
	}
	if err := registerWireArrays(conn); err != nil { // idempotent
		t.Fatal(err)
	}

	texts := []string{"", "standard", "ünïcödé ✓", "quote\"and\\backslash", "{braces},commas"}
	months := []time.Time{
		time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC),
		time.Date(1999, 12, 1, 0, 0, 0, 0, time.UTC),
		time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC),
	}
	stamps := []time.Time{
		time.Date(2026, 11, 23, 23, 59, 59, 999999000, time.UTC),
		time.Date(1999, 12, 31, 23, 59, 59, 1000, time.UTC),
		time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC),
	}
	ints := []int64{0, 1, -1, 1 << 62}
	blobs := [][]byte{bytes.Repeat([]byte{0xab}, 32), {}, {0, 1, 2}}

	var na, ea arrayBuilder
	na.reset(pgtype.TextOID)
	na.bytes([]byte(`{"a":1}`))
	na.null()
	na.text("x")
	ea.reset(pgtype.TextOID)

	var (
		gotTexts  []string
		gotMonths []time.Time
		gotStamps []time.Time
		gotInts   []int64
		gotBlobs  [][]byte
		gotNulls  []*string
		gotEmpty  []string
		card      int
	)
	err = conn.QueryRow(ctx, `SELECT $1::text[], $2::date[], $3::timestamptz[], $4::bigint[], $5::bytea[], $6::text[], $7::text[], cardinality($7::text[])`,
		build(pgtype.TextOID, texts, (*arrayBuilder).text), build(pgtype.DateOID, months, (*arrayBuilder).date),
		build(pgtype.TimestamptzOID, stamps, (*arrayBuilder).timestamptz), build(pgtype.Int8OID, ints, (*arrayBuilder).int64),
		build(pgtype.ByteaOID, blobs, (*arrayBuilder).bytes), na.array(), ea.array()).
		Scan(&gotTexts, &gotMonths, &gotStamps, &gotInts, &gotBlobs, &gotNulls, &gotEmpty, &card)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(gotTexts, texts) {
		t.Errorf("text: got %q, want %q", gotTexts, texts)
	}
	for i := range months {
		if !gotMonths[i].Equal(months[i]) {
			t.Errorf("date %d: got %v, want %v", i, gotMonths[i], months[i])
		}
	}
	for i := range stamps {
		if !gotStamps[i].Equal(stamps[i]) {
			t.Errorf("timestamptz %d: got %v, want %v", i, gotStamps[i], stamps[i])
		}
	}
	if !slices.Equal(gotInts, ints) {
		t.Errorf("bigint: got %v, want %v", gotInts, ints)
	}
	if !slices.EqualFunc(gotBlobs, blobs, bytes.Equal) {
		t.Errorf("bytea: got %x, want %x", gotBlobs, blobs)
	}
	if len(gotNulls) != 3 || gotNulls[0] == nil || *gotNulls[0] != `{"a":1}` || gotNulls[1] != nil || gotNulls[2] == nil || *gotNulls[2] != "x" {
		t.Errorf("text with a NULL: got %v", gotNulls)
	}
	if len(gotEmpty) != 0 || card != 0 {
		t.Errorf("empty array: got %q (cardinality %d)", gotEmpty, card)
	}

	// Other values of the wrapped types still go through pgx's codecs.
	var plain []string
	if err := conn.QueryRow(ctx, `SELECT $1::text[]`, []string{"a", "b"}).Scan(&plain); err != nil || !slices.Equal(plain, []string{"a", "b"}) {
		t.Errorf("plain []string after registering: got %q, %v", plain, err)
	}
}

// build is an array of elemOID elements made of vals with add.
func build[T any](elemOID uint32, vals []T, add func(*arrayBuilder, T)) wireArray {
	var a arrayBuilder
	a.reset(elemOID)
	for _, v := range vals {
		add(&a, v)
	}
	return a.array()
}
