package store

import "go.uber.org/zap"

// nopZap silences the etcd client's own zap logger; Ferry logs with slog.
func nopZap() *zap.Logger { return zap.NewNop() }
