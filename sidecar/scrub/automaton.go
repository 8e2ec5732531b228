package scrub

// This file holds the multi-pattern matcher: an Aho–Corasick automaton over
// every secret form and every rule trigger.
//
// Why not a library: the Go Aho–Corasick packages we looked at
// (github.com/cloudflare/ahocorasick, github.com/petar-dambovaliev/aho-corasick,
// github.com/BobuSumisu/aho-corasick, github.com/anknown/ahocorasick) search a
// whole haystack and return matches; none exposes the automaton state between
// calls, so none can tell a stream how many trailing bytes are still a live
// pattern prefix — exactly what the hold-back guarantee is built on. They also
// report either leftmost or non-overlapping matches, while redaction wants the
// union of all (overlapping) matches.
//
// Layout, chosen for the per-byte loop:
//   - Bytes are mapped to classes: every byte that occurs in some pattern has
//     its own class, all other bytes share class 0 (which always leads back to
//     the root, wherever you are).
//   - States up to depth denseDepth ("dense" states) have a full DFA row: one
//     uint32 per class, failure transitions already folded in. Ordinary text
//     spends nearly all its time in these shallow states.
//   - Deeper states ("sparse") keep only their trie children and a failure
//     link; past the first few bytes a pattern is almost always a single
//     chain, so this costs little time and saves most of the memory a full
//     DFA would need (a dense row per state for 1,000 secrets in all their
//     encodings would be hundreds of megabytes).
//   - A state is referred to by a "ref": a dense state's ref is its index
//     times the row stride (premultiplied, saving a multiply per byte); a
//     sparse state's ref is denseLimit plus its sparse index. The order is
//     dense without outputs, dense with outputs, sparse without, sparse
//     with, so the hot loop's only test is ref < plainLimit and "does a
//     pattern end here" is two comparisons.

// output is one pattern that ends at a state.
type output struct {
	length int32 // pattern length in bytes
	id     int32 // >= 0: secret index; < 0: rule trigger -(id+1)
}

type automaton struct {
	classes [256]uint8
	stride  uint32 // number of byte classes

	trans      []uint32 // dense rows: trans[ref+class] is the next ref
	plainLimit uint32   // refs below this are dense states with no output
	denseLimit uint32   // refs below this are dense states
	outLimit   uint32   // sparse refs from this on have outputs
	nDense     uint32

	// Sparse states, indexed by ref-denseLimit.
	spChildStart []uint32 // children of i are spChild*[spChildStart[i]:spChildStart[i+1]]
	spChildByte  []byte
	spChildRef   []uint32
	spFail       []uint32

	// Per node, indexed by node id (see id).
	// live is, per node, the length of the longest suffix of the text read
	// that a longer pattern could still extend: the node's depth if it has
	// children, else that of the nearest failure state that has. The
	// bytes a Writer must hold back for the automaton.
	live     []int32
	outStart []uint32 // own outputs of node n: outs[outStart[n]:outStart[n+1]]
	dictLink []int32  // nearest proper suffix node with outputs, or -1
	outs     []output

	maxDepth int32
}

const (
	// denseBudget bounds the memory spent on dense rows.
	denseBudget = 8 << 20
	// maxDenseDepth bounds how deep dense rows go.
	maxDenseDepth = 4
)

// id converts a ref to a node id.
func (a *automaton) id(ref uint32) uint32 {
	if ref < a.denseLimit {
		return ref / a.stride
	}
	return a.nDense + ref - a.denseLimit
}

// hasOut reports whether some pattern ends at state ref.
func (a *automaton) hasOut(ref uint32) bool {
	return ref >= a.outLimit || ref >= a.plainLimit && ref < a.denseLimit
}

// root is the ref of the start state (always dense index 0, which has no
// outputs because no pattern is empty).
const root = 0

// step returns the state after reading b in state ref.
func (a *automaton) step(ref uint32, b byte) uint32 {
	for ref >= a.denseLimit {
		i := ref - a.denseLimit
		for j := a.spChildStart[i]; j < a.spChildStart[i+1]; j++ {
			if a.spChildByte[j] == b {
				return a.spChildRef[j]
			}
		}
		ref = a.spFail[i]
	}
	return a.trans[ref+uint32(a.classes[b])]
}

// scan advances through p from state ref until the automaton reaches a
// state where some pattern ends. It returns the number of bytes consumed
// and the state reached; if n < len(p), or n == len(p) and hasOut(state),
// the byte p[n-1] led to a state with outputs.
func (a *automaton) scan(ref uint32, p []byte) (int, uint32) {
	i := 0
	for len(p)-i >= laneMin {
		q := min((len(p)-i)/4, laneBlock)
		end := i + 4*q
		n, st := a.scanLanes(ref, p[i:end])
		i += n
		ref = st
		if i < end {
			// An output ahead in this block: walk to it.
			k, st := a.scanOne(ref, p[i:end])
			i += k
			ref = st
			if a.hasOut(ref) {
				return i, ref
			}
		}
	}
	k, st := a.scanOne(ref, p[i:])
	return i + k, st
}

// scanOne is scan with a single walk.
func (a *automaton) scanOne(ref uint32, p []byte) (int, uint32) {
	trans, classes, plain := a.trans, &a.classes, a.plainLimit
	for i := 0; i < len(p); i++ {
		if ref < plain {
			ref = trans[ref+uint32(classes[p[i]])]
			if ref < plain {
				continue
			}
		} else {
			ref = a.step(ref, p[i])
		}
		if a.hasOut(ref) {
			return i + 1, ref
		}
	}
	return len(p), ref
}

// Lanes: a single walk through the automaton is a chain of dependent loads,
// so it runs at the speed of one load per byte whatever the CPU could do in
// parallel. scanLanes splits a block in four and walks the parts at the
// same time. A part other than the first starts laneWarmup bytes early from
// the root; the state it reaches at its start is the true one whenever the
// true state is at most laneWarmup deep, and this is checked afterwards
// against the state the previous part ended in (equal states at the same
// position mean equal futures), falling back to a single walk where they
// differ.
const (
	laneWarmup = 32
	laneMin    = 4 * 4 * laneWarmup
	// laneBlock bounds each lane's part, so an output (a match, a rule
	// trigger) costs a single walk over at most one block.
	laneBlock = 512
)

// scanLanes consumes a prefix of p (from state ref) in which no state has
// an output. It returns how much it consumed and the state there; the
// caller walks on from there one byte at a time.
func (a *automaton) scanLanes(ref uint32, p []byte) (int, uint32) {
	q := len(p) / 4
	if q < 4*laneWarmup {
		return 0, ref
	}
	var init [4]uint32
	init[0] = ref
	for k := 1; k < 4; k++ {
		s := uint32(root)
		for _, b := range p[k*q-laneWarmup : k*q] {
			s = a.step(s, b)
		}
		init[k] = s
	}
	trans, classes, plain, dense := a.trans, &a.classes, a.plainLimit, a.denseLimit
	s0, s1, s2, s3 := init[0], init[1], init[2], init[3]
	p0, p1, p2, p3 := p[:q], p[q:2*q], p[2*q:3*q], p[3*q:4*q]
	j := 0
	for ; j < q; j++ {
		var n0, n1, n2, n3 uint32
		if s0 < dense && s1 < dense && s2 < dense && s3 < dense {
			n0 = trans[s0+uint32(classes[p0[j]])]
			n1 = trans[s1+uint32(classes[p1[j]])]
			n2 = trans[s2+uint32(classes[p2[j]])]
			n3 = trans[s3+uint32(classes[p3[j]])]
		} else {
			n0, n1, n2, n3 = a.step(s0, p0[j]), a.step(s1, p1[j]), a.step(s2, p2[j]), a.step(s3, p3[j])
		}
		if n0 >= plain || n1 >= plain || n2 >= plain || n3 >= plain {
			if a.hasOut(n0) || a.hasOut(n1) || a.hasOut(n2) || a.hasOut(n3) {
				break
			}
		}
		s0, s1, s2, s3 = n0, n1, n2, n3
	}
	if j < q {
		// Some part reached an output: the first part is clear up to j;
		// the single walk takes over there.
		return j, s0
	}
	ends := [4]uint32{s0, s1, s2, s3}
	for k := 1; k < 4; k++ {
		if init[k] != ends[k-1] {
			return k * q, ends[k-1]
		}
	}
	return 4 * q, s3
}

// trieNode is a node of the build-time trie.
type trieNode struct {
	child, sibling int32 // first child, next sibling; -1 if none
	b              byte
	depth          int32
	outs           []output
	fail           int32
	dict           int32
}

// buildAutomaton compiles patterns (parallel slices of bytes and ids).
func buildAutomaton(pats [][]byte, ids []int32) *automaton {
	total := 1
	for _, p := range pats {
		total += len(p)
	}
	nodes := make([]trieNode, 1, total)
	nodes[0] = trieNode{child: -1, sibling: -1, fail: 0, dict: -1}
	// kids indexes every trie edge (parent<<8 | byte) for build-time
	// lookups; the sibling lists keep them in order for iteration.
	kids := make(map[uint64]int32, total)
	childOf := func(n int32, b byte) int32 {
		if c, ok := kids[uint64(n)<<8|uint64(b)]; ok {
			return c
		}
		return -1
	}
	var used [256]bool
	for i, p := range pats {
		n := int32(0)
		for _, b := range p {
			used[b] = true
			c := childOf(n, b)
			if c < 0 {
				c = int32(len(nodes))
				nodes = append(nodes, trieNode{child: -1, sibling: nodes[n].child, b: b, depth: nodes[n].depth + 1, dict: -1})
				nodes[n].child = c
				kids[uint64(n)<<8|uint64(b)] = c
			}
			n = c
		}
		o := output{length: int32(len(p)), id: ids[i]}
		dup := false
		for _, x := range nodes[n].outs {
			dup = dup || x == o
		}
		if !dup {
			nodes[n].outs = append(nodes[n].outs, o)
		}
	}

	// Breadth-first: failure and dictionary links; order is by depth.
	order := make([]int32, 0, len(nodes))
	order = append(order, 0)
	for qi := 0; qi < len(order); qi++ {
		u := order[qi]
		for v := nodes[u].child; v >= 0; v = nodes[v].sibling {
			order = append(order, v)
			if u == 0 {
				nodes[v].fail = 0
			} else {
				f := nodes[u].fail
				for {
					if c := childOf(f, nodes[v].b); c >= 0 {
						nodes[v].fail = c
						break
					}
					if f == 0 {
						nodes[v].fail = 0
						break
					}
					f = nodes[f].fail
				}
			}
			f := nodes[v].fail
			if len(nodes[f].outs) > 0 {
				nodes[v].dict = f
			} else {
				nodes[v].dict = nodes[f].dict
			}
		}
	}

	a := &automaton{}
	// Byte classes.
	a.stride = 1
	for b := 0; b < 256; b++ {
		if used[b] {
			a.classes[b] = uint8(a.stride)
			a.stride++
		}
	}
	if a.stride > 256 {
		// Every byte value is used: 256 classes plus the unused class 0
		// does not fit a uint8; fold class 0 away by shifting all down.
		for b := 0; b < 256; b++ {
			a.classes[b] = uint8(b)
		}
		a.stride = 256
	}

	// Choose how deep dense rows go.
	byDepth := map[int32]int{}
	for _, n := range nodes {
		byDepth[n.depth]++
		if n.depth > a.maxDepth {
			a.maxDepth = n.depth
		}
	}
	denseDepth := int32(0)
	cum := 0
	for d := int32(0); d <= maxDenseDepth; d++ {
		cum += byDepth[d]
		if d > 0 && cum*int(a.stride)*4 > denseBudget {
			break
		}
		denseDepth = d
	}

	// Renumber: dense plain, dense special, sparse (each in BFS order).
	special := func(n int32) bool { return len(nodes[n].outs) > 0 || nodes[n].dict >= 0 }
	newID := make([]uint32, len(nodes))
	var ordered []int32
	for pass := 0; pass < 4; pass++ {
		for _, n := range order {
			dense := nodes[n].depth <= denseDepth
			switch {
			case pass == 0 && dense && !special(n),
				pass == 1 && dense && special(n),
				pass == 2 && !dense && !special(n),
				pass == 3 && !dense && special(n):
				newID[n] = uint32(len(ordered))
				ordered = append(ordered, n)
			}
		}
		switch pass {
		case 0:
			a.plainLimit = uint32(len(ordered)) * a.stride
		case 1:
			a.nDense = uint32(len(ordered))
			a.denseLimit = a.nDense * a.stride
		case 2:
			a.outLimit = a.denseLimit + uint32(len(ordered)) - a.nDense
		}
	}
	ref := func(n int32) uint32 {
		id := newID[n]
		if id < a.nDense {
			return id * a.stride
		}
		return a.denseLimit + id - a.nDense
	}

	// Per-node metadata.
	live := make([]int32, len(nodes))
	for _, n := range order {
		switch {
		case nodes[n].child >= 0:
			live[n] = nodes[n].depth
		case n != 0:
			live[n] = live[nodes[n].fail]
		}
	}
	a.live = make([]int32, len(ordered))
	a.outStart = make([]uint32, len(ordered)+1)
	a.dictLink = make([]int32, len(ordered))
	for i, n := range ordered {
		a.live[i] = live[n]
		a.outStart[i] = uint32(len(a.outs))
		a.outs = append(a.outs, nodes[n].outs...)
		a.dictLink[i] = -1
		if d := nodes[n].dict; d >= 0 {
			a.dictLink[i] = int32(newID[d])
		}
	}
	a.outStart[len(ordered)] = uint32(len(a.outs))

	// Dense rows, in BFS order so a failure state's row is ready first.
	a.trans = make([]uint32, a.denseLimit)
	for _, n := range order {
		if nodes[n].depth > denseDepth {
			continue
		}
		row := ref(n)
		// Start from the failure state's row (the root's is all root),
		// then point this node's own children.
		if n != 0 {
			fr := ref(nodes[n].fail)
			copy(a.trans[row:row+a.stride], a.trans[fr:fr+a.stride])
		}
		for c := nodes[n].child; c >= 0; c = nodes[c].sibling {
			a.trans[row+uint32(a.classes[nodes[c].b])] = ref(c)
		}
	}

	// Sparse states.
	nSparse := uint32(len(ordered)) - a.nDense
	a.spChildStart = make([]uint32, nSparse+1)
	a.spFail = make([]uint32, nSparse)
	for i := uint32(0); i < nSparse; i++ {
		n := ordered[a.nDense+i]
		a.spChildStart[i] = uint32(len(a.spChildByte))
		a.spFail[i] = ref(nodes[n].fail)
		for c := nodes[n].child; c >= 0; c = nodes[c].sibling {
			a.spChildByte = append(a.spChildByte, nodes[c].b)
			a.spChildRef = append(a.spChildRef, ref(c))
		}
	}
	a.spChildStart[nSparse] = uint32(len(a.spChildByte))
	return a
}
