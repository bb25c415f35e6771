package store

import clientv3 "go.etcd.io/etcd/client/v3"

// Etcd is the raw client, for the store's own tests only: they set up and
// inspect keys the typed methods do not expose.
func (s *Store) Etcd() *clientv3.Client { return s.cli }
