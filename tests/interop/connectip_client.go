// Command connectip_client is a CONNECT-IP client (RFC 9484) built on an independent QUIC
// stack, quic-go, and its QPACK library: zgate's interoperability test runs it against
// zgate-relay, so that the relay is judged by a peer that shares none of its code.
//
// It opens one QUIC connection (TLS 1.3, ALPN h3, DATAGRAM frames), speaks just enough
// HTTP/3 by hand (control stream, SETTINGS, one extended CONNECT), reads the relay's
// ADDRESS_ASSIGN and ROUTE_ADVERTISEMENT capsules, then pings the relay's tunnel gateway
// through an HTTP datagram and waits for the echo reply. Every step is reported on stdout
// as one JSON object per line; the last line is {"event":"done"} (exit status 0) or
// {"event":"error",...} (exit status 1) with the QUIC close code and TLS alert when the
// peer closed the connection.
//
// It is built in GOPATH mode from Debian's packages (golang-github-lucas-clemente-quic-go-dev,
// quic-go 0.29), so it uses that release's API (SendMessage/ReceiveMessage).
package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"time"

	"github.com/lucas-clemente/quic-go"
	"github.com/lucas-clemente/quic-go/quicvarint"
	"github.com/marten-seemann/qpack"
	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
)

// HTTP/3 frame and stream types (RFC 9114 §7.2, §6.2.1).
const (
	frameData         = 0x00
	frameHeaders      = 0x01
	frameSettings     = 0x04
	streamTypeControl = 0x00
)

// HTTP/3 settings this client sends and requires from the relay.
const (
	settingEnableConnectProtocol = 0x08 // RFC 9220 §3
	settingH3Datagram            = 0x33 // RFC 9297 §2.1.1
)

// Capsule types (RFC 9484 §4.7).
const (
	capsuleAddressAssign      = 0x01
	capsuleRouteAdvertisement = 0x03
)

// h3NoError closes the connection when the test is over (RFC 9114 §8.1).
const h3NoError = 0x100

// maxFrameLength bounds what the client buffers for one HTTP/3 frame or capsule.
const maxFrameLength = 1 << 16

type options struct {
	addr       string
	serverName string
	caFile     string
	certFile   string
	keyFile    string
	noCert     bool
	gateway    netip.Addr
	path       string
	timeout    time.Duration
	cidLength  int
}

func main() {
	opts, err := parseFlags()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	if err := run(opts); err != nil {
		fail(err)
	}
	emit("done", nil)
}

func parseFlags() (options, error) {
	var opts options
	var gateway string
	flag.StringVar(&opts.addr, "addr", "127.0.0.1:4433", "relay `host:port` (UDP)")
	flag.StringVar(&opts.serverName, "server-name", "localhost", "TLS server name of the relay")
	flag.StringVar(&opts.caFile, "ca", "", "CA certificate (PEM) the relay's certificate chains to")
	flag.StringVar(&opts.certFile, "cert", "", "client certificate (PEM)")
	flag.StringVar(&opts.keyFile, "key", "", "client private key (PEM)")
	flag.BoolVar(&opts.noCert, "no-cert", false, "connect without a client certificate (the relay must refuse)")
	flag.StringVar(&gateway, "gateway", "10.100.0.1", "tunnel address to ping (the relay's gateway)")
	flag.StringVar(&opts.path, "path", "/.well-known/masque/ip/*/*/", "CONNECT-IP request path")
	flag.DurationVar(&opts.timeout, "timeout", 15*time.Second, "give up after this long")
	flag.IntVar(&opts.cidLength, "connection-id-length", 0,
		"length of the client's connection IDs; 0 keeps quic-go's default, zero-length IDs (RFC 9000 §5.1)")
	flag.Parse()
	if opts.caFile == "" {
		return opts, errors.New("-ca is required")
	}
	if !opts.noCert && (opts.certFile == "" || opts.keyFile == "") {
		return opts, errors.New("-cert and -key are required unless -no-cert")
	}
	addr, err := netip.ParseAddr(gateway)
	if err != nil || !addr.Is4() {
		return opts, fmt.Errorf("-gateway %q: not an IPv4 address", gateway)
	}
	opts.gateway = addr
	if opts.cidLength != 0 && (opts.cidLength < 4 || opts.cidLength > 20) {
		return opts, fmt.Errorf("-connection-id-length %d: quic-go takes 4 to 20 (or 0)", opts.cidLength)
	}
	return opts, nil
}

// stageError names the step that failed, so the report says where the exchange broke.
type stageError struct {
	stage string
	err   error
}

func (e *stageError) Error() string { return e.stage + ": " + e.err.Error() }
func (e *stageError) Unwrap() error { return e.err }

func at(stage string, err error) error {
	if err == nil {
		return nil
	}
	return &stageError{stage: stage, err: err}
}

func run(opts options) error {
	ctx, cancel := context.WithTimeout(context.Background(), opts.timeout)
	defer cancel()

	tlsConf, err := tlsConfig(opts)
	if err != nil {
		return at("tls-config", err)
	}
	conn, err := quic.DialAddrContext(ctx, opts.addr, tlsConf, &quic.Config{
		EnableDatagrams:      true,
		HandshakeIdleTimeout: opts.timeout,
		MaxIdleTimeout:       opts.timeout,
		ConnectionIDLength:   opts.cidLength,
	})
	if errors.Is(err, context.DeadlineExceeded) {
		return at("handshake", fmt.Errorf("no handshake with %s within %s: %w", opts.addr, opts.timeout, err))
	}
	if err != nil {
		return at("handshake", err)
	}
	defer conn.CloseWithError(h3NoError, "")
	state := conn.ConnectionState()
	emit("handshake", map[string]any{
		"alpn":        state.TLS.NegotiatedProtocol,
		"tls_version": fmt.Sprintf("%#04x", state.TLS.Version),
		"datagrams":   state.SupportsDatagrams,
	})

	if err := sendSettings(conn); err != nil {
		return at("control-stream", err)
	}
	settings, err := awaitPeerSettings(ctx, conn)
	if err != nil {
		return at("peer-settings", err)
	}
	emit("settings", map[string]any{"settings": settings})
	for _, id := range []uint64{settingEnableConnectProtocol, settingH3Datagram} {
		if settings[fmt.Sprintf("%#x", id)] != 1 {
			return at("peer-settings", fmt.Errorf("setting %#x is not 1", id))
		}
	}

	stream, err := conn.OpenStreamSync(ctx)
	if err != nil {
		return at("request", err)
	}
	if deadline, ok := ctx.Deadline(); ok {
		stream.SetReadDeadline(deadline)
	}
	if err := sendConnect(stream, opts); err != nil {
		return at("request", err)
	}
	frames := bufio.NewReader(stream)
	if err := readResponse(frames); err != nil {
		return at("response", err)
	}
	assigned, err := readCapsules(frames)
	if err != nil {
		return at("capsules", err)
	}
	return at("ping", ping(ctx, conn, uint64(stream.StreamID())/4, assigned, opts.gateway))
}

func tlsConfig(opts options) (*tls.Config, error) {
	caPEM, err := os.ReadFile(opts.caFile)
	if err != nil {
		return nil, err
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("%s: no certificate found", opts.caFile)
	}
	conf := &tls.Config{
		RootCAs:    roots,
		ServerName: opts.serverName,
		NextProtos: []string{"h3"},
		MinVersion: tls.VersionTLS13,
	}
	if !opts.noCert {
		cert, err := tls.LoadX509KeyPair(opts.certFile, opts.keyFile)
		if err != nil {
			return nil, err
		}
		conf.Certificates = []tls.Certificate{cert}
	}
	return conf, nil
}

// sendSettings opens the client's control stream and sends its SETTINGS frame.
func sendSettings(conn quic.Connection) error {
	stream, err := conn.OpenUniStream()
	if err != nil {
		return err
	}
	var payload bytes.Buffer
	quicvarint.Write(&payload, settingEnableConnectProtocol)
	quicvarint.Write(&payload, 1)
	quicvarint.Write(&payload, settingH3Datagram)
	quicvarint.Write(&payload, 1)
	var buf bytes.Buffer
	quicvarint.Write(&buf, streamTypeControl)
	writeFrame(&buf, frameSettings, payload.Bytes())
	_, err = stream.Write(buf.Bytes())
	return err
}

// awaitPeerSettings accepts the relay's unidirectional streams until its control stream
// delivers SETTINGS (RFC 9220 §3: no extended CONNECT before the peer allowed it). Other
// unidirectional streams (QPACK encoder and decoder) are drained in the background.
func awaitPeerSettings(ctx context.Context, conn quic.Connection) (map[string]uint64, error) {
	for {
		stream, err := conn.AcceptUniStream(ctx)
		if err != nil {
			return nil, err
		}
		reader := bufio.NewReader(stream)
		streamType, err := quicvarint.Read(reader)
		if err != nil {
			return nil, err
		}
		if streamType != streamTypeControl {
			go io.Copy(io.Discard, reader)
			continue
		}
		frameType, payload, err := readFrame(reader)
		if err != nil {
			return nil, err
		}
		if frameType != frameSettings {
			return nil, fmt.Errorf("control stream starts with frame type %#x, not SETTINGS", frameType)
		}
		go io.Copy(io.Discard, reader)
		go drainUniStreams(conn)
		return parseSettings(payload)
	}
}

func drainUniStreams(conn quic.Connection) {
	for {
		stream, err := conn.AcceptUniStream(context.Background())
		if err != nil {
			return
		}
		go io.Copy(io.Discard, stream)
	}
}

func parseSettings(payload []byte) (map[string]uint64, error) {
	reader := bytes.NewReader(payload)
	settings := make(map[string]uint64)
	for reader.Len() > 0 {
		id, err := quicvarint.Read(reader)
		if err != nil {
			return nil, err
		}
		value, err := quicvarint.Read(reader)
		if err != nil {
			return nil, err
		}
		// JSON object keys are strings: ids in hex, as the RFCs write them.
		settings[fmt.Sprintf("%#x", id)] = value
	}
	return settings, nil
}

// sendConnect sends the extended CONNECT request (RFC 9484 §3, RFC 9220 §3) as one
// HEADERS frame whose field section is QPACK-encoded with the static table only.
func sendConnect(stream quic.Stream, opts options) error {
	var block bytes.Buffer
	encoder := qpack.NewEncoder(&block)
	for _, field := range []qpack.HeaderField{
		{Name: ":method", Value: "CONNECT"},
		{Name: ":protocol", Value: "connect-ip"},
		{Name: ":scheme", Value: "https"},
		{Name: ":authority", Value: authority(opts)},
		{Name: ":path", Value: opts.path},
		{Name: "capsule-protocol", Value: "?1"},
	} {
		if err := encoder.WriteField(field); err != nil {
			return err
		}
	}
	if err := encoder.Close(); err != nil {
		return err
	}
	var frame bytes.Buffer
	writeFrame(&frame, frameHeaders, block.Bytes())
	_, err := stream.Write(frame.Bytes())
	return err
}

func authority(opts options) string {
	_, port, err := net.SplitHostPort(opts.addr)
	if err != nil {
		return opts.serverName
	}
	return net.JoinHostPort(opts.serverName, port)
}

// readResponse reads the response's HEADERS frame and requires a 200.
func readResponse(frames *bufio.Reader) error {
	for {
		frameType, payload, err := readFrame(frames)
		if err != nil {
			return err
		}
		if frameType != frameHeaders {
			continue // RFC 9114 §9: unknown frame types are ignored
		}
		fields, err := qpack.NewDecoder(nil).DecodeFull(payload)
		if err != nil {
			return err
		}
		headers := make(map[string]string, len(fields))
		for _, field := range fields {
			headers[field.Name] = field.Value
		}
		emit("response", map[string]any{"headers": headers})
		if headers[":status"] != "200" {
			return fmt.Errorf("status %q, want 200", headers[":status"])
		}
		return nil
	}
}

type assignedAddress struct {
	RequestID uint64       `json:"request_id"`
	Prefix    netip.Prefix `json:"prefix"`
}

type addressRange struct {
	Start    netip.Addr `json:"start"`
	End      netip.Addr `json:"end"`
	Protocol uint8      `json:"ip_protocol"`
}

// readCapsules reads capsules from the DATA frames of the request stream (RFC 9297 §3.2)
// until both ADDRESS_ASSIGN and ROUTE_ADVERTISEMENT arrived; it returns the addresses.
func readCapsules(frames *bufio.Reader) ([]assignedAddress, error) {
	capsules := bufio.NewReader(&dataReader{frames: frames})
	var assigned []assignedAddress
	var routesSeen bool
	for assigned == nil || !routesSeen {
		capsuleType, value, err := readFrame(capsules)
		if err != nil {
			return nil, err
		}
		switch capsuleType {
		case capsuleAddressAssign:
			if assigned, err = parseAddressAssign(value); err != nil {
				return nil, err
			}
			emit("address_assign", map[string]any{"addresses": assigned})
		case capsuleRouteAdvertisement:
			ranges, err := parseRouteAdvertisement(value)
			if err != nil {
				return nil, err
			}
			routesSeen = true
			emit("route_advertisement", map[string]any{"ranges": ranges})
		default:
			emit("capsule", map[string]any{"type": capsuleType, "length": len(value)})
		}
	}
	return assigned, nil
}

// dataReader presents the payloads of a stream's DATA frames as one byte stream, skipping
// frames of other types.
type dataReader struct {
	frames  *bufio.Reader
	pending []byte
}

func (d *dataReader) Read(p []byte) (int, error) {
	for len(d.pending) == 0 {
		frameType, payload, err := readFrame(d.frames)
		if err != nil {
			return 0, err
		}
		if frameType == frameData {
			d.pending = payload
		}
	}
	n := copy(p, d.pending)
	d.pending = d.pending[n:]
	return n, nil
}

func parseAddressAssign(value []byte) ([]assignedAddress, error) {
	reader := bytes.NewReader(value)
	addresses := []assignedAddress{}
	for reader.Len() > 0 {
		requestID, err := quicvarint.Read(reader)
		if err != nil {
			return nil, err
		}
		addr, err := readAddress(reader)
		if err != nil {
			return nil, err
		}
		bits, err := reader.ReadByte()
		if err != nil {
			return nil, err
		}
		prefix, err := addr.Prefix(int(bits))
		if err != nil || prefix.Addr() != addr {
			return nil, fmt.Errorf("ADDRESS_ASSIGN: bad prefix %s/%d", addr, bits)
		}
		addresses = append(addresses, assignedAddress{RequestID: requestID, Prefix: prefix})
	}
	return addresses, nil
}

func parseRouteAdvertisement(value []byte) ([]addressRange, error) {
	reader := bytes.NewReader(value)
	ranges := []addressRange{}
	for reader.Len() > 0 {
		start, err := readAddress(reader)
		if err != nil {
			return nil, err
		}
		end, err := readIPOfVersion(reader, start)
		if err != nil {
			return nil, err
		}
		protocol, err := reader.ReadByte()
		if err != nil {
			return nil, err
		}
		if end.Less(start) {
			return nil, fmt.Errorf("ROUTE_ADVERTISEMENT: range %s-%s ends before it starts", start, end)
		}
		ranges = append(ranges, addressRange{Start: start, End: end, Protocol: protocol})
	}
	return ranges, nil
}

// readAddress reads an IP Version byte and the address it announces (RFC 9484 §4.7.1).
func readAddress(reader *bytes.Reader) (netip.Addr, error) {
	version, err := reader.ReadByte()
	if err != nil {
		return netip.Addr{}, err
	}
	var raw []byte
	switch version {
	case 4:
		raw = make([]byte, 4)
	case 6:
		raw = make([]byte, 16)
	default:
		return netip.Addr{}, fmt.Errorf("IP version %d", version)
	}
	if _, err := io.ReadFull(reader, raw); err != nil {
		return netip.Addr{}, err
	}
	addr, _ := netip.AddrFromSlice(raw)
	return addr, nil
}

// readIPOfVersion reads an address of the same family as like, without a version byte
// (a range's end address, RFC 9484 §4.7.3).
func readIPOfVersion(reader *bytes.Reader, like netip.Addr) (netip.Addr, error) {
	raw := make([]byte, like.BitLen()/8)
	if _, err := io.ReadFull(reader, raw); err != nil {
		return netip.Addr{}, err
	}
	addr, _ := netip.AddrFromSlice(raw)
	return addr, nil
}

// ping sends ICMP echo requests from the assigned IPv4 address to the gateway as HTTP
// datagrams (RFC 9297 §2.1: quarter stream id, then context id 0 for IP packets, RFC 9484
// §6), one a second since datagrams may be lost, until an echo reply comes back.
func ping(ctx context.Context, conn quic.Connection, quarterID uint64, assigned []assignedAddress, gateway netip.Addr) error {
	var source netip.Addr
	for _, a := range assigned {
		if a.Prefix.Addr().Is4() {
			source = a.Prefix.Addr()
			break
		}
	}
	if !source.IsValid() {
		return errors.New("no IPv4 address assigned")
	}
	var prefix bytes.Buffer
	quicvarint.Write(&prefix, quarterID)
	quicvarint.Write(&prefix, 0)

	replies := make(chan []byte)
	receiveErr := make(chan error, 1)
	go func() {
		for {
			datagram, err := conn.ReceiveMessage()
			if err != nil {
				receiveErr <- err
				return
			}
			replies <- datagram
		}
	}()

	id := os.Getpid() & 0xffff
	sent := make(map[int]time.Time)
	send := func(seq int) error {
		packet, err := echoRequest(source, gateway, id, seq)
		if err != nil {
			return err
		}
		datagram := append(append(make([]byte, 0, prefix.Len()+len(packet)), prefix.Bytes()...), packet...)
		if err := conn.SendMessage(datagram); err != nil {
			return err
		}
		sent[seq] = time.Now()
		emit("echo_request", map[string]any{"from": source, "to": gateway, "id": id, "seq": seq})
		return nil
	}
	if err := send(1); err != nil {
		return err
	}
	ticker := time.NewTicker(time.Second)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return fmt.Errorf("no echo reply from %s after %d requests: %w", gateway, len(sent), ctx.Err())
		case err := <-receiveErr:
			return err
		case <-ticker.C:
			if err := send(len(sent) + 1); err != nil {
				return err
			}
		case datagram := <-replies:
			reply, err := parseEchoReply(datagram, quarterID, id)
			if err != nil {
				emit("datagram_ignored", map[string]any{"reason": err.Error(), "length": len(datagram)})
				continue
			}
			start, ok := sent[reply.seq]
			if !ok || reply.from != gateway || reply.to != source {
				emit("datagram_ignored", map[string]any{"reason": "not a reply to our echo request"})
				continue
			}
			emit("echo_reply", map[string]any{
				"from":   reply.from,
				"to":     reply.to,
				"id":     id,
				"seq":    reply.seq,
				"ttl":    reply.ttl,
				"rtt_ms": float64(time.Since(start).Microseconds()) / 1000,
			})
			return nil
		}
	}
}

func echoRequest(source, destination netip.Addr, id, seq int) ([]byte, error) {
	message := icmp.Message{
		Type: ipv4.ICMPTypeEcho,
		Body: &icmp.Echo{ID: id, Seq: seq, Data: []byte("zgate interop, quic-go")},
	}
	payload, err := message.Marshal(nil)
	if err != nil {
		return nil, err
	}
	header := make([]byte, ipv4.HeaderLen)
	header[0] = 4<<4 | ipv4.HeaderLen/4
	binary.BigEndian.PutUint16(header[2:], uint16(ipv4.HeaderLen+len(payload)))
	binary.BigEndian.PutUint16(header[4:], uint16(seq))
	header[8] = 64 // TTL
	header[9] = 1  // ICMP
	src, dst := source.As4(), destination.As4()
	copy(header[12:16], src[:])
	copy(header[16:20], dst[:])
	binary.BigEndian.PutUint16(header[10:], internetChecksum(header))
	return append(header, payload...), nil
}

// internetChecksum is the one's complement sum of RFC 1071.
func internetChecksum(b []byte) uint16 {
	var sum uint32
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	return ^uint16(sum)
}

type echoReply struct {
	from, to netip.Addr
	seq      int
	ttl      int
}

func parseEchoReply(datagram []byte, quarterID uint64, id int) (echoReply, error) {
	reader := bytes.NewReader(datagram)
	gotQuarterID, err := quicvarint.Read(reader)
	if err != nil {
		return echoReply{}, err
	}
	contextID, err := quicvarint.Read(reader)
	if err != nil {
		return echoReply{}, err
	}
	if gotQuarterID != quarterID || contextID != 0 {
		return echoReply{}, fmt.Errorf("quarter stream id %d context id %d", gotQuarterID, contextID)
	}
	packet := datagram[len(datagram)-reader.Len():]
	header, err := ipv4.ParseHeader(packet)
	if err != nil {
		return echoReply{}, err
	}
	if header.Version != 4 || header.Protocol != 1 || header.TotalLen > len(packet) {
		return echoReply{}, fmt.Errorf("not an IPv4 ICMP packet (version %d, protocol %d)", header.Version, header.Protocol)
	}
	message, err := icmp.ParseMessage(1, packet[header.Len:header.TotalLen])
	if err != nil {
		return echoReply{}, err
	}
	echo, ok := message.Body.(*icmp.Echo)
	if message.Type != ipv4.ICMPTypeEchoReply || !ok || echo.ID != id {
		return echoReply{}, fmt.Errorf("ICMP type %v, not our echo reply", message.Type)
	}
	from, _ := netip.AddrFromSlice(header.Src.To4())
	to, _ := netip.AddrFromSlice(header.Dst.To4())
	return echoReply{from: from, to: to, seq: echo.Seq, ttl: header.TTL}, nil
}

// readFrame reads one type-length-value unit, the shape shared by HTTP/3 frames
// (RFC 9114 §7.1) and capsules (RFC 9297 §3.2).
func readFrame(reader *bufio.Reader) (uint64, []byte, error) {
	frameType, err := quicvarint.Read(reader)
	if err != nil {
		return 0, nil, err
	}
	length, err := quicvarint.Read(reader)
	if err != nil {
		return 0, nil, unexpectedEOF(err)
	}
	if length > maxFrameLength {
		return 0, nil, fmt.Errorf("frame type %#x: length %d over %d", frameType, length, maxFrameLength)
	}
	payload := make([]byte, length)
	if _, err := io.ReadFull(reader, payload); err != nil {
		return 0, nil, unexpectedEOF(err)
	}
	return frameType, payload, nil
}

func unexpectedEOF(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}

func writeFrame(buf *bytes.Buffer, frameType uint64, payload []byte) {
	quicvarint.Write(buf, frameType)
	quicvarint.Write(buf, uint64(len(payload)))
	buf.Write(payload)
}

// emit writes one JSON report line: {"event": event, ...fields}.
func emit(event string, fields map[string]any) {
	line := map[string]any{"event": event}
	for key, value := range fields {
		line[key] = value
	}
	if err := json.NewEncoder(os.Stdout).Encode(line); err != nil {
		fmt.Fprintln(os.Stderr, "cannot write the report:", err)
		os.Exit(1)
	}
}

// fail reports err, with the QUIC close code and TLS alert when the peer closed the
// connection, and exits with status 1.
func fail(err error) {
	fields := map[string]any{"error": err.Error()}
	var stage *stageError
	if errors.As(err, &stage) {
		fields["stage"] = stage.stage
	}
	var transportErr *quic.TransportError
	var applicationErr *quic.ApplicationError
	switch {
	case errors.As(err, &transportErr):
		code := uint64(transportErr.ErrorCode)
		fields["transport_error_code"] = code
		fields["remote"] = transportErr.Remote
		fields["reason"] = transportErr.ErrorMessage
		if code >= 0x100 && code <= 0x1ff {
			// CRYPTO_ERROR: the low byte is the TLS alert (RFC 9001 §4.8).
			fields["tls_alert"] = code - 0x100
		}
	case errors.As(err, &applicationErr):
		fields["application_error_code"] = uint64(applicationErr.ErrorCode)
		fields["remote"] = applicationErr.Remote
		fields["reason"] = applicationErr.ErrorMessage
	}
	emit("error", fields)
	os.Exit(1)
}
