package predict_test

import (
	"math"
	"math/rand"
	"testing"

	"github.com/ferryvm/ferry/internal/predict"
)

// day is how many samples a simulated day holds.
const day = 48

// loadTrace is a host's load over days: a daily cycle (quiet nights, busy
// afternoons), a nightly batch job's spike, growth, and noise.
func loadTrace(days int, growth, noise float64, seed int64) []float64 {
	rng := rand.New(rand.NewSource(seed))
	y := make([]float64, days*day)
	for i := range y {
		phase := 2 * math.Pi * float64(i%day) / day
		v := 40 + 25*math.Sin(phase-math.Pi/2) + growth*float64(i)/day
		if i%day >= 4 && i%day < 7 {
			v += 30 // the batch job
		}
		y[i] = v + noise*rng.NormFloat64()
	}
	return y
}

// rollingMAE is a forecaster's mean absolute error h steps ahead over the
// last `days` days of y, forecasting from each step with the history
// before it.
func rollingMAE(t *testing.T, f predict.Forecaster, y []float64, h, days int) float64 {
	var sum float64
	var n int
	for origin := len(y) - days*day; origin+h <= len(y); origin += 3 {
		fc, err := f.Forecast(y[:origin], h)
		if err != nil {
			t.Fatalf("%s: %v", f.Name(), err)
		}
		sum += math.Abs(fc[h-1] - y[origin+h-1])
		n++
	}
	return sum / float64(n)
}

// TestHoltWintersBeatsTheAlternativesOnDailyLoad is why the balancer
// forecasts with Holt-Winters: on load with a daily season it predicts an
// hour and a half ahead (3 samples of a 48-sample day) better than
// repeating the last value (what reacting amounts to), than repeating
// yesterday, and than a trend without a season; on load without a season
// it does no worse than the trend alone.
func TestHoltWintersBeatsTheAlternativesOnDailyLoad(t *testing.T) {
	const h = 3
	for _, c := range []struct {
		name string
		y    []float64
	}{
		{name: "daily, growing", y: loadTrace(6, 4, 3, 1)},
		{name: "daily, noisy", y: loadTrace(6, 0, 8, 2)},
	} {
		hw := rollingMAE(t, predict.HoltWinters{Period: day}, c.y, h, 2)
		naive := rollingMAE(t, predict.Naive{}, c.y, h, 2)
		snaive := rollingMAE(t, predict.SeasonalNaive{Period: day}, c.y, h, 2)
		holt := rollingMAE(t, predict.HoltWinters{}, c.y, h, 2)
		t.Logf("%s: MAE %d steps ahead: holt-winters %.2f, naive %.2f, seasonal-naive %.2f, holt %.2f", c.name, h, hw, naive, snaive, holt)
		if !(hw < naive && hw < snaive && hw < holt) {
			t.Errorf("%s: holt-winters %.2f does not beat naive %.2f, seasonal-naive %.2f, holt %.2f", c.name, hw, naive, snaive, holt)
		}
	}
	// A steady climb without a season.
	rng := rand.New(rand.NewSource(3))
	y := make([]float64, 6*day)
	for i := range y {
		y[i] = 20 + 0.3*float64(i) + 2*rng.NormFloat64()
	}
	hw := rollingMAE(t, predict.HoltWinters{Period: day}, y, h, 2)
	holt := rollingMAE(t, predict.HoltWinters{}, y, h, 2)
	naive := rollingMAE(t, predict.Naive{}, y, h, 2)
	t.Logf("climb: holt-winters %.2f, holt %.2f, naive %.2f", hw, holt, naive)
	if hw > 1.2*holt || hw > naive {
		t.Errorf("climb without a season: holt-winters %.2f against holt %.2f and naive %.2f", hw, holt, naive)
	}
}
