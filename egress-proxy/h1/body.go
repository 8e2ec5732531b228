package h1

import (
	"bufio"
	"errors"
	"io"
	"net/http/httputil"
	"strconv"
	"sync"
)

// CopyN copies exactly n bytes from br to w through br's own buffer (no
// copy buffer of its own, no allocation). It returns the bytes written.
func CopyN(w io.Writer, br *bufio.Reader, n int64) (int64, error) {
	var done int64
	for done < n {
		if br.Buffered() == 0 {
			if _, err := br.Peek(1); err != nil {
				return done, unexpectedEOF(err)
			}
		}
		chunk, _ := br.Peek(int(min(int64(br.Buffered()), n-done)))
		m, err := w.Write(chunk)
		br.Discard(m)
		done += int64(m)
		if err != nil {
			return done, err
		}
	}
	return done, nil
}

// CopyToEOF copies br to w until br's source ends: the body of a response
// delimited by the connection's close. It returns the bytes written.
func CopyToEOF(w io.Writer, br *bufio.Reader, chunked bool) (int64, error) {
	var done int64
	for {
		if br.Buffered() == 0 {
			if _, err := br.Peek(1); err != nil {
				if errors.Is(err, io.EOF) {
					return done, nil
				}
				return done, err
			}
		}
		chunk, _ := br.Peek(br.Buffered())
		var m int
		var err error
		if chunked {
			m, err = writeChunk(w, chunk)
		} else {
			m, err = w.Write(chunk)
		}
		br.Discard(m)
		done += int64(m)
		if err != nil {
			return done, err
		}
	}
}

// chunkBufs holds CopyChunked's decode buffers: one per call would be
// 16 KiB allocated for every chunked body.
var chunkBufs = sync.Pool{New: func() any { return new([16 << 10]byte) }}

// CopyChunked decodes a chunked body from br and writes it to w, chunked
// again or, for an HTTP/1.0 recipient, as plain data (chunk extensions
// and trailer fields are dropped: they are hop-by-hop here, and trailers
// could smuggle fields the proxy never checked). maxTrailer bounds the
// trailer section. It returns the decoded body bytes.
func CopyChunked(w io.Writer, br *bufio.Reader, maxTrailer int, chunked bool) (int64, error) {
	cr := httputil.NewChunkedReader(br)
	buf := chunkBufs.Get().(*[16 << 10]byte)
	defer chunkBufs.Put(buf)
	var done int64
	for {
		n, err := cr.Read(buf[:])
		if n > 0 {
			var m int
			var werr error
			if chunked {
				m, werr = writeChunk(w, buf[:n])
			} else {
				m, werr = w.Write(buf[:n])
			}
			done += int64(m)
			if werr != nil {
				return done, werr
			}
		}
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return done, unexpectedEOF(err)
		}
	}
	if err := DiscardTrailer(br, maxTrailer); err != nil {
		return done, err
	}
	if !chunked {
		return done, nil
	}
	_, err := io.WriteString(w, "0\r\n\r\n")
	return done, err
}

// writeChunk writes p as one chunk. It reports len(p) only when the
// whole chunk was written. The size line is formatted in w's own buffer
// when w is a *bufio.Writer (as the proxy's are): a local array handed to
// an io.Writer escapes, which would allocate for every chunk.
func writeChunk(w io.Writer, p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	var h []byte
	if bw, ok := w.(*bufio.Writer); ok {
		h = bw.AvailableBuffer()
	}
	h = strconv.AppendInt(h, int64(len(p)), 16)
	h = append(h, '\r', '\n')
	if _, err := w.Write(h); err != nil {
		return 0, err
	}
	if _, err := w.Write(p); err != nil {
		return 0, err
	}
	if _, err := io.WriteString(w, "\r\n"); err != nil {
		return 0, err
	}
	return len(p), nil
}

// DiscardTrailer reads the trailer section that follows a chunked body's
// last chunk, through its empty line, and drops it. It refuses a section
// longer than max bytes, and lines that are not fields.
func DiscardTrailer(br *bufio.Reader, max int) error {
	total := 0
	for {
		line, err := br.ReadSlice('\n')
		total += len(line)
		if total > max || errors.Is(err, bufio.ErrBufferFull) {
			return ErrTrailerTooLarge
		}
		if err != nil {
			return unexpectedEOF(err)
		}
		switch string(line) {
		case "\r\n", "\n":
			return nil
		}
	}
}

func unexpectedEOF(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}
