package auditstore

import (
	"encoding/binary"
	"fmt"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
)

// The audit rows of a transaction go to Postgres as one INSERT whose
// parameters are 19 arrays, one per column. pgx would build each array
// from a Go slice element by element through its generic encode plans
// (about 4 µs and a dozen allocations a row: 11% of the CPU profile of
// make bench-dispatcher, which holds the dispatcher and its 50 clients);
// the columns below are written straight into the binary array format
// instead, and wireArrayCodec hands those bytes to pgx as they are.

// wireArray is a one-dimensional Postgres array already in the binary wire
// format (array_recv's input).
type wireArray struct {
	b []byte
	// reserve, when larger than b, is how much room to make in the
	// encode buffer before copying b: the size of every parameter of the
	// statement (columns.args).
	reserve int
}

// arrayBuilder writes a wireArray element by element.
type arrayBuilder struct {
	b []byte
	n int32
}

// reset starts an empty array of elemOID elements with the header of a
// one-dimensional array: ndim, has-null flag, element type OID, then the
// dimension's length and lower bound.
func (a *arrayBuilder) reset(elemOID uint32) {
	if a.b == nil {
		a.b = make([]byte, 0, 4096)
	}
	a.b = a.b[:0]
	a.b = binary.BigEndian.AppendUint32(a.b, 1) // ndim
	a.b = binary.BigEndian.AppendUint32(a.b, 0) // has nulls: set by null
	a.b = binary.BigEndian.AppendUint32(a.b, elemOID)
	a.b = binary.BigEndian.AppendUint32(a.b, 0) // length: set by array
	a.b = binary.BigEndian.AppendUint32(a.b, 1) // lower bound
	a.n = 0
}

// bytes appends an element: its length, then v (as put, hash.go, writes).
func (a *arrayBuilder) bytes(v []byte) {
	a.b = put(a.b, v)
	a.n++
}

// text appends an element: its length, then v.
func (a *arrayBuilder) text(v string) {
	a.b = put(a.b, v)
	a.n++
}

func (a *arrayBuilder) null() {
	a.b = binary.BigEndian.AppendUint32(a.b, 0xffffffff) // length -1
	binary.BigEndian.PutUint32(a.b[4:], 1)
	a.n++
}

func (a *arrayBuilder) int64(v int64) {
	a.b = binary.BigEndian.AppendUint32(a.b, 8)
	a.b = binary.BigEndian.AppendUint64(a.b, uint64(v))
	a.n++
}

func (a *arrayBuilder) int32(v int32) {
	a.b = binary.BigEndian.AppendUint32(a.b, 4)
	a.b = binary.BigEndian.AppendUint32(a.b, uint32(v))
	a.n++
}

// pgEpoch is the origin of Postgres's binary dates and timestamps, in
// Unix seconds and microseconds (computed once: every row writes both).
var (
	pgEpoch      = time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)
	pgEpochUnix  = pgEpoch.Unix()
	pgEpochMicro = pgEpoch.UnixMicro()
)

// timestamptz appends t as microseconds since pgEpoch (t must already be
// at microsecond precision).
func (a *arrayBuilder) timestamptz(t time.Time) {
	a.int64(t.UnixMicro() - pgEpochMicro)
}

// date appends the day of t (a UTC midnight) as days since pgEpoch.
func (a *arrayBuilder) date(t time.Time) {
	a.int32(int32((t.Unix() - pgEpochUnix) / (24 * 60 * 60)))
}

// array finishes the array. The builder must not be written again before
// the next reset while the result is in use.
func (a *arrayBuilder) array() wireArray {
	binary.BigEndian.PutUint32(a.b[12:], uint32(a.n))
	return wireArray{b: a.b}
}

// wireArrayCodec is the codec of an array type that also encodes a
// wireArray, by copying its bytes; every other value goes to the codec it
// wraps.
type wireArrayCodec struct{ pgtype.Codec }

func (c wireArrayCodec) PlanEncode(m *pgtype.Map, oid uint32, format int16, value any) pgtype.EncodePlan {
	if _, ok := value.(wireArray); ok && format == pgtype.BinaryFormatCode {
		return wireArrayPlan{}
	}
	return c.Codec.PlanEncode(m, oid, format, value)
}

type wireArrayPlan struct{}

func (wireArrayPlan) Encode(value any, buf []byte) ([]byte, error) {
	a := value.(wireArray)
	if a.reserve > len(a.b) {
		buf = slices.Grow(buf, a.reserve)
	}
	return append(buf, a.b...), nil
}

// wireArrayOIDs are the array types the audit INSERT takes.
var wireArrayOIDs = []uint32{pgtype.TextArrayOID, pgtype.DateArrayOID, pgtype.Int8ArrayOID,
	pgtype.TimestamptzArrayOID, pgtype.ByteaArrayOID}

// registerWireArrays lets conn take wireArrays for the array types of the
// audit INSERT.
func registerWireArrays(conn *pgx.Conn) error {
	tm := conn.TypeMap()
	for _, oid := range wireArrayOIDs {
		t, ok := tm.TypeForOID(oid)
		if !ok {
			return fmt.Errorf("register wire arrays: pgx knows no type with OID %d", oid)
		}
		if _, done := t.Codec.(wireArrayCodec); done {
			continue
		}
		tm.RegisterType(&pgtype.Type{Name: t.Name, OID: oid, Codec: wireArrayCodec{t.Codec}})
	}
	return nil
}
