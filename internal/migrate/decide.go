package migrate

import (
	"context"

	"github.com/ferryvm/ferry/api"
	"github.com/ferryvm/ferry/internal/errdefs"
	"github.com/ferryvm/ferry/internal/store"
)

// Deciding is what Decide needs besides the store.
type Deciding struct {
	VM       *api.VM
	Src, Dst *api.Node
	// AskedDowntime and AskedBandwidth say which limits the request set
	// itself; the guest's policy fills the others.
	AskedDowntime, AskedBandwidth bool
}

// Decide applies the guest's migration policy to opts and predicts the
// move from what the hosts measured (the guest's memory, the path between
// them) and the cluster's finished migrations; for "auto" it puts the
// chosen strategy in opts. The API (an operator's move) and the drain
// controller both decide through it, so that a drained busy guest gets the
// same strategy and escalations as one moved by hand.
func Decide(ctx context.Context, st *store.Store, d Deciding, opts *api.MigrationOptions) (*api.MigrationPrediction, error) {
	policies, err := st.ListPolicies(ctx)
	if err != nil {
		return nil, err
	}
	pol := PolicyFor(policies, d.VM.Spec.Labels)
	ApplyPolicy(opts, pol, d.AskedDowntime, d.AskedBandwidth)
	link, err := st.LinkStat(ctx, d.Src.Name, d.Dst.Name)
	if err != nil {
		return nil, err
	}
	samples, err := st.MigSamples(ctx, 200)
	if err != nil {
		return nil, err
	}
	allowed := pol.Strategies
	if !opts.Auto {
		allowed = nil // every strategy is predicted; the operator's runs
	}
	pred := Predict(Predicting{VM: d.VM, Src: d.Src, Dst: d.Dst, Link: link, Opts: *opts, Allowed: allowed, Samples: samples})
	if !opts.Auto {
		pred.Chosen = StrategyOf(*opts)
		pred.Why = "chosen by the operator (" + pred.Chosen + ")"
		pred.SwitchoverMS = float64(Calibrate(samples).For(pred.Chosen).Switchover.Milliseconds())
		return pred, nil
	}
	if pred.Chosen == "" {
		return pred, errdefs.New(errdefs.ErrFailedPrecondition, "no strategy can move this guest: "+pred.Why)
	}
	chosen := StrategyOptions(*opts, pred.Chosen)
	opts.Strategy, opts.Compress = chosen.Strategy, chosen.Compress
	return pred, nil
}
