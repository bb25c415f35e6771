package simcluster

import (
	"io"
	"net"
	"net/url"
	"sync"
)

// proxy stands between one host and one etcd endpoint, so that a test can
// cut the host off etcd (a partition) and heal it. Cut, it forwards
// nothing: open connections are closed and new ones are held open without
// an answer, as a link that drops packets leaves them.
type proxy struct {
	ln     net.Listener
	target string

	mu    sync.Mutex
	cut   bool
	conns map[net.Conn]bool
}

// newProxy proxies endpoint (an etcd client URL) and returns the URL to
// use instead.
func newProxy(endpoint string) (*proxy, string, error) {
	u, err := url.Parse(endpoint)
	if err != nil {
		return nil, "", err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, "", err
	}
	p := &proxy{ln: ln, target: u.Host, conns: map[net.Conn]bool{}}
	go p.serve()
	u.Host = ln.Addr().String()
	return p, u.String(), nil
}

func (p *proxy) serve() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		cut := p.cut
		p.conns[c] = true
		p.mu.Unlock()
		if cut {
			continue // held open, unanswered, until healed or closed
		}
		go p.pipe(c)
	}
}

func (p *proxy) pipe(c net.Conn) {
	u, err := net.Dial("tcp", p.target)
	if err != nil {
		p.drop(c)
		return
	}
	p.mu.Lock()
	if p.cut {
		p.mu.Unlock()
		u.Close()
		return
	}
	p.conns[u] = true
	p.mu.Unlock()
	done := make(chan struct{}, 2)
	go func() { io.Copy(u, c); done <- struct{}{} }()
	go func() { io.Copy(c, u); done <- struct{}{} }()
	<-done
	p.drop(c)
	p.drop(u)
}

func (p *proxy) drop(c net.Conn) {
	p.mu.Lock()
	delete(p.conns, c)
	p.mu.Unlock()
	c.Close()
}

// setCut cuts the host off (true) or lets it through again.
func (p *proxy) setCut(cut bool) {
	p.mu.Lock()
	p.cut = cut
	conns := p.conns
	p.conns = map[net.Conn]bool{}
	p.mu.Unlock()
	for c := range conns {
		c.Close()
	}
}

func (p *proxy) close() {
	p.ln.Close()
	p.setCut(true)
}
