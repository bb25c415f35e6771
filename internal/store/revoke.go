package store

import (
	"context"
	"crypto/x509"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

// revocationOptions make the embedded etcd server refuse calls whose client
// certificate distrusted says was revoked (a removed host or user, not a
// renewal, whose holder moves to its new certificate): every unary call, the start of every
// stream, and every message a stream sends or receives afterwards. etcd
// checks its revocation list only when a connection is made, so without
// this a removed host's connection made before its removal (and its open
// watches) would go on working. Open streams are also checked every
// recheckEvery, so that a watch on quiet keys ends too.
func revocationOptions(distrusted func(*x509.Certificate) bool) []grpc.ServerOption {
	check := func(ctx context.Context) error {
		p, ok := peer.FromContext(ctx)
		if !ok {
			return nil
		}
		ti, ok := p.AuthInfo.(credentials.TLSInfo)
		if !ok || len(ti.State.PeerCertificates) == 0 {
			return nil // etcd's own TLS settings decide about such callers
		}
		c := ti.State.PeerCertificates[0]
		if distrusted(c) {
			return status.Errorf(codes.Unauthenticated, "certificate %q (serial %s) has been revoked", c.Subject.CommonName, c.SerialNumber.Text(16))
		}
		return nil
	}
	unary := func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		if err := check(ctx); err != nil {
			return nil, err
		}
		return h(ctx, req)
	}
	stream := func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, h grpc.StreamHandler) error {
		if err := check(ss.Context()); err != nil {
			return err
		}
		// A stream that only waits (a watch on keys nobody writes) is
		// checked every recheckEvery too: its handler sees its context end.
		ctx, cancel := context.WithCancel(ss.Context())
		defer cancel()
		go func() {
			t := time.NewTicker(recheckEvery)
			defer t.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case <-t.C:
					if check(ctx) != nil {
						cancel()
						return
					}
				}
			}
		}()
		err := h(srv, &checkedStream{ServerStream: ss, ctx: ctx, check: check})
		if cerr := check(ctx); cerr != nil {
			return cerr
		}
		return err
	}
	return []grpc.ServerOption{grpc.ChainUnaryInterceptor(unary), grpc.ChainStreamInterceptor(stream)}
}

// recheckEvery is how often an open stream's certificate is checked again
// between messages.
const recheckEvery = time.Second

// checkedStream checks its caller's certificate again on every message;
// its context ends when the certificate is found revoked.
type checkedStream struct {
	grpc.ServerStream
	ctx   context.Context
	check func(context.Context) error
}

func (s *checkedStream) Context() context.Context { return s.ctx }

func (s *checkedStream) SendMsg(m any) error {
	if err := s.check(s.Context()); err != nil {
		return err
	}
	return s.ServerStream.SendMsg(m)
}

func (s *checkedStream) RecvMsg(m any) error {
	if err := s.check(s.Context()); err != nil {
		return err
	}
	return s.ServerStream.RecvMsg(m)
}
