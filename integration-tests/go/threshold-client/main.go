// A threshold-style tunnel client written for tunneld's interoperability tests. It speaks
// the wire protocol of the threshold / koding-tunnel clients (CONNECT /_controlPath/, the
// "controlHandshake" / "controlOk" exchange on stream 1, newline-delimited JSON control
// messages, one client-opened yamux stream per message) with the reference yamux
// implementation, hashicorp/yamux. With -dialect koding it reads koding/tunnel's control
// messages instead ({"action":1,"transportProtocol":N,"localPort":P}: HTTP 1, TCP 2,
// WebSocket 3), maps the local port to a -service entry named by the port, and panics on a
// message it cannot use, as koding's client did on threshold's shape. Built in GOPATH mode
// from Debian's packages:
//
//	GO111MODULE=off GOPATH=/usr/share/gocode go build -o threshold-client .
package main

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"

	"github.com/hashicorp/yamux"
)

type services map[string]string

func (s services) String() string { return fmt.Sprint(map[string]string(s)) }
func (s services) Set(v string) error {
	kv := strings.SplitN(v, "=", 2)
	if len(kv) != 2 {
		return fmt.Errorf("want name=host:port, got %q", v)
	}
	s[kv[0]] = kv[1]
	return nil
}

type controlMessage struct {
	Action  int    `json:"action"`
	Service string `json:"service"`
}

// kodingMessage is koding/tunnel's proto.ControlMessage.
type kodingMessage struct {
	Action    int `json:"action"`
	Protocol  int `json:"transportProtocol"`
	LocalPort int `json:"localPort"`
}

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "threshold-client: "+format+"\n", args...)
	os.Exit(1)
}

func main() {
	server := flag.String("server", "", "tunneld address host:port")
	serverName := flag.String("servername", "localhost", "TLS server name")
	caFile := flag.String("ca", "", "CA certificate (PEM) that signed tunneld's certificate")
	certFile := flag.String("cert", "", "client certificate (PEM), CN <id>@<domain>")
	keyFile := flag.String("key", "", "client key (PEM)")
	id := flag.String("id", "", "client id sent in the identity header")
	header := flag.String("header", "X-Threshold-ClientId", "identity header name")
	dialect := flag.String("dialect", "threshold", "control messages: threshold or koding")
	plain := flag.Bool("plain", false, "plain TCP instead of TLS (threshold's UseTls: false)")
	liveconfig := flag.String("liveconfig", "", "instead of tunneling: PUT this JSON to /tunnels on the server's port, as threshold's client forwards its /liveconfig, print the answer and exit")
	svc := services{}
	flag.Var(svc, "service", "name=host:port of a local service (repeatable)")
	flag.Parse()

	pem, err := os.ReadFile(*caFile)
	if err != nil {
		fail("read CA: %v", err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(pem) {
		fail("no certificate in %s", *caFile)
	}
	cfg := &tls.Config{RootCAs: roots, ServerName: *serverName}
	if *certFile != "" {
		pair, err := tls.LoadX509KeyPair(*certFile, *keyFile)
		if err != nil {
			fail("client certificate: %v", err)
		}
		cfg.Certificates = []tls.Certificate{pair}
	}
	if *liveconfig != "" {
		client := &http.Client{Transport: &http.Transport{TLSClientConfig: cfg}}
		req, err := http.NewRequest("PUT", "https://"+*server+"/tunnels", strings.NewReader(*liveconfig))
		if err != nil {
			fail("request: %v", err)
		}
		req.Header.Set("Content-Type", "application/json")
		resp, err := client.Do(req)
		if err != nil {
			fail("PUT /tunnels: %v", err)
		}
		body, _ := io.ReadAll(resp.Body)
		fmt.Printf("status %d\n%s\n", resp.StatusCode, strings.TrimSpace(string(body)))
		os.Exit(0)
	}
	var conn net.Conn
	if *plain {
		conn, err = net.Dial("tcp", *server)
	} else {
		conn, err = tls.Dial("tcp", *server, cfg)
	}
	if err != nil {
		fail("dial: %v", err)
	}

	req, err := http.NewRequest("CONNECT", "https://"+*server+"/_controlPath/", nil)
	if err != nil {
		fail("request: %v", err)
	}
	if *id != "" {
		req.Header.Set(*header, *id)
	}
	if err := req.Write(conn); err != nil {
		fail("write CONNECT: %v", err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), req)
	if err != nil {
		fail("read CONNECT answer: %v", err)
	}
	if resp.StatusCode != 200 || resp.Status != "200 Connected to Tunnel" {
		body, _ := io.ReadAll(resp.Body)
		fail("refused: %s: %s", resp.Status, strings.TrimSpace(string(body)))
	}

	session, err := yamux.Client(conn, yamux.DefaultConfig())
	if err != nil {
		fail("yamux: %v", err)
	}
	ctl, err := session.Open()
	if err != nil {
		fail("open control stream: %v", err)
	}
	if _, err := ctl.Write([]byte("controlHandshake")); err != nil {
		fail("write handshake: %v", err)
	}
	ok := make([]byte, len("controlOk"))
	if _, err := io.ReadFull(ctl, ok); err != nil || string(ok) != "controlOk" {
		fail("handshake answer %q: %v", ok, err)
	}
	fmt.Println("connected")

	dec := json.NewDecoder(ctl)
	for {
		name := ""
		if *dialect == "koding" {
			var msg kodingMessage
			if err := dec.Decode(&msg); err != nil {
				fmt.Fprintf(os.Stderr, "threshold-client: control stream ended: %v\n", err)
				os.Exit(0)
			}
			// koding's client picks its proxy by protocol and has none for anything else.
			if msg.Action != 1 || msg.Protocol < 1 || msg.Protocol > 3 {
				panic(fmt.Sprintf("unusable koding control message %+v", msg))
			}
			name = strconv.Itoa(msg.LocalPort)
		} else {
			var msg controlMessage
			if err := dec.Decode(&msg); err != nil {
				fmt.Fprintf(os.Stderr, "threshold-client: control stream ended: %v\n", err)
				os.Exit(0)
			}
			name = msg.Service
		}
		// As the original client: open the stream in the control loop, serve it apart.
		stream, err := session.Open()
		if err != nil {
			fail("open stream: %v", err)
		}
		go serve(stream, svc[name], name)
	}
}

func serve(stream net.Conn, addr, name string) {
	defer stream.Close()
	if addr == "" {
		fmt.Fprintf(os.Stderr, "threshold-client: no local address for service %q\n", name)
		return
	}
	local, err := net.Dial("tcp", addr)
	if err != nil {
		fmt.Fprintf(os.Stderr, "threshold-client: dial %s: %v\n", addr, err)
		return
	}
	defer local.Close()
	done := make(chan struct{})
	go func() {
		io.Copy(local, stream)
		if tcp, ok := local.(*net.TCPConn); ok {
			tcp.CloseWrite()
		}
		close(done)
	}()
	io.Copy(stream, local)
	stream.Close()
	<-done
}
