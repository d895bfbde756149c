package audit

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/zfaas/zfaas/store"
)

// JetStream names. Records are stored in batches: each message on Subject
// holds one or more consecutive records as jsonl lines (MarshalLine), and
// its headers name the first and last sequence, the last record's hash and
// the latest record time. Checkpoints (signed notes) and the published
// verifier keys live in a second stream.
const (
	StreamName           = "ZFAAS_AUDIT"
	Subject              = "zfaas.audit.records"
	CheckpointStreamName = "ZFAAS_AUDIT_CHECKPOINTS"
	CheckpointSubject    = "zfaas.audit.checkpoints"
	KeySubjectPrefix     = "zfaas.audit.keys."

	hdrFirst = "Zfaas-Audit-First"
	hdrLast  = "Zfaas-Audit-Last"
	hdrHead  = "Zfaas-Audit-Head"
	hdrTime  = "Zfaas-Audit-Time"
	hdrSize  = "Zfaas-Audit-Size"

	metaHash = "zfaas.audit.hash"
)

// Defaults used when the matching Config field is zero.
const (
	DefaultOrigin             = "zfaas/audit"
	DefaultCheckpointEvery    = 1000
	DefaultCheckpointInterval = time.Minute
	DefaultRetentionInterval  = time.Hour
	DefaultQueueSize          = 8192
	DefaultMaxBatch           = 512
	// maxMessageBytes keeps a batch message under NATS's default 1 MiB
	// max_payload.
	maxMessageBytes = 512 << 10
)

// Sentinel errors.
var (
	// ErrClosed is returned by appends after Close.
	ErrClosed = errors.New("audit: log closed")
	// ErrQueueFull is returned by Append when the queue is full; the
	// record is counted as dropped and an audit.dropped record says so.
	ErrQueueFull = errors.New("audit: queue full, record dropped")
	// ErrInvalidRecord is returned for a record without a valid Kind.
	ErrInvalidRecord = errors.New("audit: invalid record")
	// ErrHeadLost is returned when the stream has had records but holds
	// none now (purged outside this package): the chain cannot continue.
	ErrHeadLost = errors.New("audit: stream was emptied outside the audit log; the chain cannot continue")
	// ErrSuiteMismatch is returned by Open when the stream's chain uses a
	// different hash than the configured suite.
	ErrSuiteMismatch = errors.New("audit: the existing chain uses a different hash algorithm")
)

// Config configures Open.
type Config struct {
	// Store holds the audit streams. Required.
	Store *store.Store
	// Suite picks SHA-256 + ECDSA P-256 (standard, the default) or SM3 +
	// SM2 (gm). Every writer of one chain must use the same suite.
	Suite Suite
	// Origin names the log in checkpoints and is the signing key's name;
	// default DefaultOrigin.
	Origin string
	// KeyDir holds the signing key (created 0600 on first use) and
	// audit.pub. Empty: this writer cuts no checkpoints.
	KeyDir string
	// Node is written into every record this log writes (e.g. the
	// gateway's node name).
	Node string
	// CheckpointEvery cuts a checkpoint when a write crosses a multiple of
	// this many records; default DefaultCheckpointEvery, negative disables.
	CheckpointEvery int
	// CheckpointInterval cuts a checkpoint of the head this often when it
	// moved; default DefaultCheckpointInterval, negative disables.
	CheckpointInterval time.Duration
	// Retention is the maximum age of records; older ones are removed,
	// after an audit.expired record says which. Zero keeps everything.
	Retention time.Duration
	// RetentionInterval is how often expiry runs; default
	// DefaultRetentionInterval.
	RetentionInterval time.Duration
	// QueueSize bounds the records waiting to be written; default
	// DefaultQueueSize. Past it Append drops (counted, then recorded).
	QueueSize int
	// MaxBatch bounds the records per store write; default DefaultMaxBatch.
	MaxBatch int
	// Masker runs on every record before it is written, before the
	// built-in deny-list of secret-bearing keys. Nil: the deny-list only.
	Masker Masker
	// Logger receives the log's warnings with component=audit; nil discards.
	Logger *slog.Logger
	// Registerer receives the log's metrics (zfaas_audit_*); nil: none.
	Registerer prometheus.Registerer
	// ProductVersion is zfaas's version, written into CEF and OCSF
	// exports; default "dev".
	ProductVersion string
	// Now is the clock; default time.Now.
	Now func() time.Time
	// Rand is the randomness for keys and signatures; default crypto/rand.
	Rand io.Reader
}

// Stats are a log's counters since Open.
type Stats struct {
	// Appended records were written to the store by this log.
	Appended uint64
	// Dropped records never reached the store (queue full, Close timed
	// out, or the write failed for good).
	Dropped uint64
	// Conflicts counts writes retried because another writer appended
	// first; Errors counts other failed store writes (retried).
	Conflicts, Errors uint64
	// Checkpoints counts checkpoints this log signed.
	Checkpoints uint64
}

// Log is a writer and reader of the audit chain. Several Logs (in one
// process or on several gateways) may write to one store; together they
// produce one gap-free chain. A Log is safe for concurrent use.
type Log struct {
	cfg    Config
	log    *slog.Logger
	hash   HashAlg
	js     jetstream.JetStream
	recs   jetstream.Stream
	cps    jetstream.Stream
	signer *signer

	mu     sync.RWMutex // guards closed against sends on q
	closed bool
	q      chan *item

	ctx     context.Context // the writer's; cancelled when Close gives up
	cancel  context.CancelFunc
	stopped chan struct{} // closed when the writer exits
	bg      sync.WaitGroup

	head       head // owned by the writer goroutine
	cpMu       sync.Mutex
	lastCPSize atomic.Uint64

	pendingDrops                                          atomic.Uint64 // dropped, not yet recorded
	appended, dropped, conflicts, errs, checkpointsSigned atomic.Uint64
}

type head struct {
	seq    uint64 // audit sequence of the last record
	hash   string // its hash (zeroHash before seq 1)
	msgSeq uint64 // stream sequence of its message
}

type item struct {
	rec   Record
	done  chan result // nil for Append
	flush bool        // a barrier: no record
}

type result struct {
	rec Record
	err error
}

// Open creates or binds the audit streams, loads (or creates) the signing
// key when KeyDir is set, publishes its verifier key, reads the chain's
// head and starts the writer. ctx bounds Open only.
func Open(ctx context.Context, cfg Config) (*Log, error) {
	if cfg.Store == nil {
		return nil, errors.New("audit: Store is required")
	}
	if cfg.Suite == "" {
		cfg.Suite = SuiteStandard
	}
	if !cfg.Suite.valid() {
		return nil, fmt.Errorf("audit: unknown suite %q", cfg.Suite)
	}
	if cfg.Origin == "" {
		cfg.Origin = DefaultOrigin
	}
	if !validKeyName(cfg.Origin) {
		return nil, fmt.Errorf("audit: origin %q: no spaces or +", cfg.Origin)
	}
	if cfg.CheckpointEvery == 0 {
		cfg.CheckpointEvery = DefaultCheckpointEvery
	}
	if cfg.CheckpointInterval == 0 {
		cfg.CheckpointInterval = DefaultCheckpointInterval
	}
	if cfg.RetentionInterval <= 0 {
		cfg.RetentionInterval = DefaultRetentionInterval
	}
	if cfg.QueueSize <= 0 {
		cfg.QueueSize = DefaultQueueSize
	}
	if cfg.MaxBatch <= 0 {
		cfg.MaxBatch = DefaultMaxBatch
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.ProductVersion == "" {
		cfg.ProductVersion = "dev"
	}
	if cfg.Rand == nil {
		cfg.Rand = rand.Reader
	}
	lg := cfg.Logger
	if lg == nil {
		lg = slog.New(slog.DiscardHandler)
	}
	l := &Log{
		cfg:     cfg,
		log:     lg.With("component", "audit"),
		hash:    cfg.Suite.Hash(),
		js:      cfg.Store.JetStream(),
		q:       make(chan *item, cfg.QueueSize),
		stopped: make(chan struct{}),
	}
	var err error
	if err = registerMetrics(cfg.Registerer, l); err != nil {
		return nil, fmt.Errorf("audit: metrics: %w", err)
	}
	replicas := max(cfg.Store.Replicas(), 1)
	if l.recs, err = bindStream(ctx, l.js, jetstream.StreamConfig{
		Name:        StreamName,
		Description: "zfaas audit records: one hash chain, batches of jsonl records",
		Subjects:    []string{Subject},
		Storage:     jetstream.FileStorage,
		Replicas:    replicas,
		Retention:   jetstream.LimitsPolicy,
		Discard:     jetstream.DiscardNew,
		DenyDelete:  true,
		AllowDirect: true,
		Metadata:    map[string]string{metaHash: string(l.hash)},
	}); err != nil {
		return nil, err
	}
	if got := l.recs.CachedInfo().Config.Metadata[metaHash]; got != "" && got != string(l.hash) {
		return nil, fmt.Errorf("%w: stream %s uses %s, suite %s wants %s", ErrSuiteMismatch, StreamName, got, cfg.Suite, l.hash)
	}
	if l.cps, err = bindStream(ctx, l.js, jetstream.StreamConfig{
		Name:        CheckpointStreamName,
		Description: "zfaas audit checkpoints (signed notes) and verifier keys",
		Subjects:    []string{CheckpointSubject, KeySubjectPrefix + ">"},
		Storage:     jetstream.FileStorage,
		Replicas:    replicas,
		Discard:     jetstream.DiscardNew,
		DenyDelete:  true,
		AllowDirect: true,
	}); err != nil {
		return nil, err
	}
	if cfg.KeyDir != "" {
		if l.signer, err = loadOrCreateKey(cfg.KeyDir, cfg.Suite, cfg.Origin, cfg.Rand); err != nil {
			return nil, err
		}
		if err := l.publishKey(ctx, l.signer.v); err != nil {
			return nil, err
		}
	}
	if l.head, err = l.readHead(ctx); err != nil {
		return nil, err
	}
	if cp, ok, err := l.lastCheckpoint(ctx); err != nil {
		return nil, err
	} else if ok {
		l.lastCPSize.Store(cp)
	}
	l.ctx, l.cancel = context.WithCancel(context.Background())
	go l.run()
	if l.signer != nil && cfg.CheckpointInterval > 0 {
		l.every(cfg.CheckpointInterval, func(ctx context.Context) {
			if _, err := l.Checkpoint(ctx); err != nil && ctx.Err() == nil {
				l.log.Warn("timed checkpoint failed", "err", err)
			}
		})
	}
	if cfg.Retention > 0 {
		l.every(cfg.RetentionInterval, func(ctx context.Context) {
			if _, err := l.Expire(ctx); err != nil && ctx.Err() == nil {
				l.log.Warn("audit expiry failed", "err", err)
			}
		})
	}
	return l, nil
}

func bindStream(ctx context.Context, js jetstream.JetStream, cfg jetstream.StreamConfig) (jetstream.Stream, error) {
	s, err := js.Stream(ctx, cfg.Name)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		s, err = js.CreateStream(ctx, cfg)
		if errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
			s, err = js.Stream(ctx, cfg.Name)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("audit: stream %s: %w", cfg.Name, err)
	}
	return s, nil
}

// every runs fn every d until Close.
func (l *Log) every(d time.Duration, fn func(context.Context)) {
	l.bg.Add(1)
	go func() {
		defer l.bg.Done()
		t := time.NewTicker(d)
		defer t.Stop()
		for {
			select {
			case <-l.stopped:
				return
			case <-t.C:
				fn(l.ctx)
			}
		}
	}()
}

// Suite returns the log's suite.
func (l *Log) Suite() Suite { return l.cfg.Suite }

// Origin returns the log's origin (checkpoint first line, key name).
func (l *Log) Origin() string { return l.cfg.Origin }

// Verifier returns this log's signing key's verifier, or nil without a
// KeyDir.
func (l *Log) Verifier() *Verifier {
	if l.signer == nil {
		return nil
	}
	return l.signer.v
}

// Stats returns the log's counters.
func (l *Log) Stats() Stats {
	return Stats{
		Appended: l.appended.Load(), Dropped: l.dropped.Load(),
		Conflicts: l.conflicts.Load(), Errors: l.errs.Load(), Checkpoints: l.checkpointsSigned.Load(),
	}
}

// Append queues a record and returns at once; the writer assigns its
// sequence and hash and stores it. It never blocks: when the queue is full
// the record is dropped, counted (Stats.Dropped, the
// zfaas_audit_dropped_total metric) and an audit.dropped record with the
// count is written as soon as there is room, and Append returns
// ErrQueueFull. A record without a valid Kind is refused with
// ErrInvalidRecord.
func (l *Log) Append(rec Record) error {
	if !validKind(rec.Kind) {
		return fmt.Errorf("%w: kind %q", ErrInvalidRecord, rec.Kind)
	}
	if rec.Time.IsZero() {
		rec.Time = l.cfg.Now()
	}
	l.mu.RLock()
	defer l.mu.RUnlock()
	if l.closed {
		l.drop(1)
		return ErrClosed
	}
	select {
	case l.q <- &item{rec: rec}:
		return nil
	default:
		l.drop(1)
		return ErrQueueFull
	}
}

// AppendWait is Append with backpressure: when the queue is full it waits
// for room until ctx ends (then drops and counts the record, as Append
// does at once). It does not wait for the record to be stored. Request
// paths use it so that a burst slows callers down instead of losing
// records.
func (l *Log) AppendWait(ctx context.Context, rec Record) error {
	if !validKind(rec.Kind) {
		return fmt.Errorf("%w: kind %q", ErrInvalidRecord, rec.Kind)
	}
	if rec.Time.IsZero() {
		rec.Time = l.cfg.Now()
	}
	if err := l.enqueue(ctx, &item{rec: rec}); err != nil {
		l.drop(1)
		return err
	}
	return nil
}

func (l *Log) drop(n uint64) {
	l.dropped.Add(n)
	if l.pendingDrops.Add(n) == n {
		l.log.Warn("audit queue full: records dropped (an audit.dropped record will say how many)")
	}
}

// AppendSync appends a record and waits until it is stored; it returns
// the record as stored (with Seq, Prev and Hash). It waits for queue room
// rather than dropping. Records appended before it by this Log are stored
// before it.
func (l *Log) AppendSync(ctx context.Context, rec Record) (Record, error) {
	if !validKind(rec.Kind) {
		return Record{}, fmt.Errorf("%w: kind %q", ErrInvalidRecord, rec.Kind)
	}
	if rec.Time.IsZero() {
		rec.Time = l.cfg.Now()
	}
	it := &item{rec: rec, done: make(chan result, 1)}
	if err := l.enqueue(ctx, it); err != nil {
		return Record{}, err
	}
	select {
	case r := <-it.done:
		return r.rec, r.err
	case <-ctx.Done():
		return Record{}, context.Cause(ctx)
	}
}

// Flush waits until every record appended before the call is stored (or
// dropped), or ctx ends.
func (l *Log) Flush(ctx context.Context) error {
	it := &item{flush: true, done: make(chan result, 1)}
	if err := l.enqueue(ctx, it); err != nil {
		return err
	}
	select {
	case r := <-it.done:
		return r.err
	case <-ctx.Done():
		return context.Cause(ctx)
	}
}

func (l *Log) enqueue(ctx context.Context, it *item) error {
	for {
		l.mu.RLock()
		if l.closed {
			l.mu.RUnlock()
			return ErrClosed
		}
		select {
		case l.q <- it:
			l.mu.RUnlock()
			return nil
		default:
		}
		l.mu.RUnlock()
		select {
		case <-ctx.Done():
			return context.Cause(ctx)
		case <-time.After(time.Millisecond):
		}
	}
}

// Close stops accepting records, writes what is queued and waits for it
// until ctx ends; records still queued then are dropped (counted and
// logged). Close is idempotent.
func (l *Log) Close(ctx context.Context) error {
	l.mu.Lock()
	if !l.closed {
		l.closed = true
		close(l.q)
	}
	l.mu.Unlock()
	var err error
	select {
	case <-l.stopped:
	case <-ctx.Done():
		l.cancel() // the writer fails what is left
		<-l.stopped
		err = fmt.Errorf("audit: close: %w", context.Cause(ctx))
	}
	l.cancel()
	l.bg.Wait()
	if n := l.pendingDrops.Load(); n > 0 {
		l.log.Error("audit log closed with dropped records not yet recorded", "dropped", n)
	}
	return err
}

// run is the writer: it takes what is queued, in batches, and writes it.
func (l *Log) run() {
	defer close(l.stopped)
	batch := make([]*item, 0, l.cfg.MaxBatch)
	for it := range l.q {
		batch = append(batch[:0], it)
	gather:
		for len(batch) < l.cfg.MaxBatch {
			select {
			case more, ok := <-l.q:
				if !ok {
					break gather
				}
				batch = append(batch, more)
			default:
				break gather
			}
		}
		l.write(batch)
	}
}

// write stores a batch: masks the records, chains them onto the head and
// publishes them with expected-last-sequence, re-reading the head and
// re-chaining on a conflict. Failures other than conflicts are retried
// with backoff until the writer's context ends.
func (l *Log) write(batch []*item) {
	ctx := l.ctx
	var pending []*item
	var barriers []*item
	for _, it := range batch {
		if it.flush {
			barriers = append(barriers, it)
			continue
		}
		l.prepare(ctx, &it.rec)
		pending = append(pending, it)
	}
	if n := l.pendingDrops.Swap(0); n > 0 {
		rec := Record{Kind: KindDropped, Time: l.cfg.Now(), Subject: "audit", Action: "drop", Outcome: OutcomeFailure,
			Details: map[string]any{"count": n, "reason": "queue full or log closing"}}
		l.prepare(ctx, &rec)
		pending = append([]*item{{rec: rec}}, pending...)
	}
	backoff := 50 * time.Millisecond
	for len(pending) > 0 {
		n, err := l.publish(ctx, pending)
		if n > 0 {
			pending = pending[n:]
			backoff = 50 * time.Millisecond
			continue
		}
		if ctx.Err() != nil {
			break
		}
		var apiErr *jetstream.APIError
		if errors.As(err, &apiErr) && (apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
			apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant) {
			l.conflicts.Add(1)
		} else {
			l.errs.Add(1)
			l.log.Warn("audit write failed; retrying", "err", err, "records", len(pending))
			select {
			case <-ctx.Done():
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, 5*time.Second)
		}
		// Re-read the head: another writer appended, or our write landed
		// although its answer was lost.
		for ctx.Err() == nil {
			h, err := l.readHead(ctx)
			if err == nil {
				l.head = h
				break
			}
			l.errs.Add(1)
			l.log.Warn("audit: read head failed; retrying", "err", err)
			select {
			case <-ctx.Done():
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, 5*time.Second)
		}
	}
	for _, it := range pending { // only when the writer was cancelled
		l.dropped.Add(1)
		if it.done != nil {
			it.done <- result{err: fmt.Errorf("audit: not written: %w", ErrClosed)}
		}
	}
	if len(pending) > 0 {
		l.log.Error("audit records not written: log closed before the store answered", "records", len(pending))
	}
	for _, it := range barriers {
		it.done <- result{}
	}
}

// prepare masks and normalizes a record before it is chained.
func (l *Log) prepare(ctx context.Context, r *Record) {
	r.V = RecordVersion
	if r.Node == "" {
		r.Node = l.cfg.Node
	}
	r.Time = r.Time.UTC()
	d, err := normalizeDetails(r.Details)
	if err != nil {
		l.log.Warn("audit: details not encodable; erased", "kind", r.Kind, "err", err)
		d, r.Erased = nil, append(r.Erased, "/details")
	}
	r.Details = d
	if l.cfg.Masker != nil && r.Details != nil {
		if err := l.cfg.Masker.Mask(ctx, r); err != nil {
			l.log.Warn("audit: masker failed; details erased", "kind", r.Kind, "err", err)
			r.Details, r.Erased = nil, append(r.Erased, "/details")
		}
	}
	if r.Details != nil {
		r.Erased = append(r.Erased, scrub(r.Details, "/details")...)
		if len(r.Details) == 0 {
			r.Details = nil
		}
	}
}

// publish chains a prefix of pending onto the head and writes it as one
// message; it returns how many records were stored.
func (l *Log) publish(ctx context.Context, pending []*item) (int, error) {
	h := l.head
	var body bytes.Buffer
	var maxTime time.Time
	n := 0
	for _, it := range pending {
		r := &it.rec
		r.Seq, r.Prev = h.seq+1, h.hash
		line, err := l.seal(r)
		if err != nil { // cannot happen with normalized details; never silently
			l.log.Error("audit: record not encodable; details erased", "kind", r.Kind, "err", err)
			r.Details, r.Erased = nil, append(r.Erased, "/details")
			if line, err = l.seal(r); err != nil {
				return 0, err
			}
		}
		if n > 0 && body.Len()+len(line)+1 > maxMessageBytes {
			break
		}
		body.Write(line)
		body.WriteByte('\n')
		if r.Time.After(maxTime) {
			maxTime = r.Time
		}
		h.seq, h.hash = r.Seq, r.Hash
		n++
		if n >= l.cfg.MaxBatch {
			break
		}
	}
	first := pending[0].rec.Seq
	msg := &nats.Msg{Subject: Subject, Data: body.Bytes(), Header: nats.Header{}}
	msg.Header.Set(hdrFirst, strconv.FormatUint(first, 10))
	msg.Header.Set(hdrLast, strconv.FormatUint(h.seq, 10))
	msg.Header.Set(hdrHead, h.hash)
	msg.Header.Set(hdrTime, FormatTime(maxTime))
	ack, err := l.js.PublishMsg(ctx, msg, jetstream.WithExpectLastSequence(l.head.msgSeq), jetstream.WithExpectStream(StreamName))
	if err != nil {
		return 0, err
	}
	before := l.head.seq
	h.msgSeq = ack.Sequence
	l.head = h
	l.appended.Add(uint64(n))
	for _, it := range pending[:n] {
		if it.done != nil {
			it.done <- result{rec: it.rec}
		}
	}
	if every := uint64(l.cfg.CheckpointEvery); l.signer != nil && l.cfg.CheckpointEvery > 0 && h.seq/every > before/every {
		if _, err := l.cutCheckpoint(ctx, h.seq, h.hash); err != nil && ctx.Err() == nil {
			l.log.Warn("audit checkpoint failed", "size", h.seq, "err", err)
		}
	}
	return n, nil
}

// seal sets r.Hash and returns r's line.
func (l *Log) seal(r *Record) ([]byte, error) {
	c, err := Canonical(r)
	if err != nil {
		return nil, err
	}
	r.Hash = hex.EncodeToString(l.hash.Sum(c))
	// The line is the canonical object with the hash as its last member,
	// exactly as MarshalLine encodes it.
	line := make([]byte, 0, len(c)+len(r.Hash)+10)
	line = append(line, c[:len(c)-1]...)
	line = append(line, `,"hash":"`...)
	line = append(line, r.Hash...)
	return append(line, `"}`...), nil
}

// readHead reads the last record of the chain from the stream.
func (l *Log) readHead(ctx context.Context) (head, error) {
	msg, err := l.recs.GetLastMsgForSubject(ctx, Subject)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		info, err := l.recs.Info(ctx)
		if err != nil {
			return head{}, fmt.Errorf("audit: stream info: %w", err)
		}
		if info.State.LastSeq != 0 {
			return head{}, ErrHeadLost
		}
		return head{hash: zeroHash}, nil
	}
	if err != nil {
		return head{}, fmt.Errorf("audit: read head: %w", err)
	}
	last, err := lastLine(msg.Data)
	if err != nil {
		return head{}, fmt.Errorf("audit: head message %d: %w", msg.Sequence, err)
	}
	return head{seq: last.Seq, hash: last.Hash, msgSeq: msg.Sequence}, nil
}

func lastLine(data []byte) (Record, error) {
	data = bytes.TrimRight(data, "\n")
	i := bytes.LastIndexByte(data, '\n')
	return ParseLine(data[i+1:])
}

// Checkpoint signs a checkpoint of the chain's current head, unless one
// at that size or later exists, and returns the latest checkpoint. It
// fails without a KeyDir.
func (l *Log) Checkpoint(ctx context.Context) (Checkpoint, error) {
	if l.signer == nil {
		return Checkpoint{}, errors.New("audit: no signing key (KeyDir is empty)")
	}
	h, err := l.readHead(ctx)
	if err != nil {
		return Checkpoint{}, err
	}
	return l.cutCheckpoint(ctx, h.seq, h.hash)
}

func (l *Log) cutCheckpoint(ctx context.Context, size uint64, headHex string) (Checkpoint, error) {
	l.cpMu.Lock()
	defer l.cpMu.Unlock()
	if size == 0 {
		return Checkpoint{}, errors.New("audit: the chain is empty")
	}
	if last, ok, err := l.lastCheckpointNote(ctx); err != nil {
		return Checkpoint{}, err
	} else if ok && last.Size >= size {
		return last, nil
	}
	hb, err := hex.DecodeString(headHex)
	if err != nil || len(hb) != 32 {
		return Checkpoint{}, fmt.Errorf("audit: head hash %q is not 32 bytes of hex", headHex)
	}
	note, err := signNote(l.cfg.Rand, l.signer, checkpointText(l.cfg.Origin, size, hb))
	if err != nil {
		return Checkpoint{}, err
	}
	msg := &nats.Msg{Subject: CheckpointSubject, Data: []byte(note), Header: nats.Header{}}
	msg.Header.Set(hdrSize, strconv.FormatUint(size, 10))
	if _, err := l.js.PublishMsg(ctx, msg, jetstream.WithExpectStream(CheckpointStreamName)); err != nil {
		return Checkpoint{}, fmt.Errorf("audit: store checkpoint: %w", err)
	}
	l.checkpointsSigned.Add(1)
	if size > l.lastCPSize.Load() {
		l.lastCPSize.Store(size)
	}
	return Checkpoint{Origin: l.cfg.Origin, Size: size, Head: hb, Note: note}, nil
}

// lastCheckpoint returns the size of the latest stored checkpoint.
func (l *Log) lastCheckpoint(ctx context.Context) (uint64, bool, error) {
	cp, ok, err := l.lastCheckpointNote(ctx)
	return cp.Size, ok, err
}

func (l *Log) lastCheckpointNote(ctx context.Context) (Checkpoint, bool, error) {
	msg, err := l.cps.GetLastMsgForSubject(ctx, CheckpointSubject)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return Checkpoint{}, false, nil
	}
	if err != nil {
		return Checkpoint{}, false, fmt.Errorf("audit: read last checkpoint: %w", err)
	}
	split := bytes.LastIndex(msg.Data, []byte("\n\n"))
	if split < 0 {
		return Checkpoint{}, false, fmt.Errorf("audit: stored checkpoint %d is malformed", msg.Sequence)
	}
	cp, err := parseCheckpointText(string(msg.Data[:split+1]))
	if err != nil {
		return Checkpoint{}, false, fmt.Errorf("audit: stored checkpoint %d: %w", msg.Sequence, err)
	}
	cp.Note = string(msg.Data)
	return cp, true, nil
}

// publishKey stores v under its own subject unless it is there already.
func (l *Log) publishKey(ctx context.Context, v *Verifier) error {
	subj := fmt.Sprintf("%s%08x", KeySubjectPrefix, v.KeyID())
	msg, err := l.cps.GetLastMsgForSubject(ctx, subj)
	if err == nil && string(msg.Data) == v.String() {
		return nil
	}
	if err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) {
		return fmt.Errorf("audit: read published keys: %w", err)
	}
	if _, err := l.js.Publish(ctx, subj, []byte(v.String()), jetstream.WithExpectStream(CheckpointStreamName)); err != nil {
		return fmt.Errorf("audit: publish verifier key: %w", err)
	}
	return nil
}

// PublicKeys returns the verifier keys every writer of the chain has
// published (current and retired), in their text form. They are what the
// writers claim; an auditor should compare them with keys obtained out of
// band (each writer's KeyDir/audit.pub).
func (l *Log) PublicKeys(ctx context.Context) ([]string, error) {
	var out []string
	err := scan(ctx, l.cps, jetstream.ConsumerConfig{
		FilterSubject: KeySubjectPrefix + ">",
		DeliverPolicy: jetstream.DeliverLastPerSubjectPolicy,
	}, 0, func(m jetstream.Msg) (bool, error) {
		out = append(out, string(m.Data()))
		return true, nil
	})
	return out, err
}

// scan reads the messages an ephemeral consumer with cfg has pending when
// it is made, in order, until fn returns false, or the stream sequence
// passes until (0: no bound).
func scan(ctx context.Context, s jetstream.Stream, cfg jetstream.ConsumerConfig, until uint64, fn func(jetstream.Msg) (bool, error)) error {
	cfg.AckPolicy = jetstream.AckNonePolicy
	cfg.InactiveThreshold = time.Minute
	cfg.MemoryStorage = true
	cfg.Replicas = 1
	cons, err := s.CreateConsumer(ctx, cfg)
	if err != nil {
		return fmt.Errorf("audit: consumer: %w", err)
	}
	name := cons.CachedInfo().Name
	defer func() {
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		_ = s.DeleteConsumer(dctx, name)
		cancel()
	}()
	pending := cons.CachedInfo().NumPending
	if pending == 0 {
		return nil
	}
	it, err := cons.Messages(jetstream.PullMaxMessages(256))
	if err != nil {
		return fmt.Errorf("audit: consume: %w", err)
	}
	defer it.Stop()
	for range pending {
		m, err := it.Next(jetstream.NextContext(ctx))
		if err != nil {
			return fmt.Errorf("audit: read: %w", err)
		}
		md, err := m.Metadata()
		if err != nil {
			return fmt.Errorf("audit: read: %w", err)
		}
		if until > 0 && md.Sequence.Stream > until {
			return nil
		}
		cont, err := fn(m)
		if err != nil || !cont {
			return err
		}
		if until > 0 && md.Sequence.Stream == until {
			return nil
		}
	}
	return nil
}
