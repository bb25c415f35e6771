package metrics

import (
	dto "github.com/prometheus/client_model/go"
)

// Sum adds up the series of one family whose labels include want: a
// counter's or gauge's value, a histogram's count of observations. found
// is false when no series matched. (For tests and benchmarks that read a
// scrape, as Prometheus would.)
func Sum(f *dto.MetricFamily, want map[string]string) (sum float64, found bool) {
	if f == nil {
		return 0, false
	}
metric:
	for _, m := range f.GetMetric() {
		have := map[string]string{}
		for _, l := range m.GetLabel() {
			have[l.GetName()] = l.GetValue()
		}
		for k, v := range want {
			if have[k] != v {
				continue metric
			}
		}
		found = true
		switch f.GetType() {
		case dto.MetricType_COUNTER:
			sum += m.GetCounter().GetValue()
		case dto.MetricType_GAUGE:
			sum += m.GetGauge().GetValue()
		case dto.MetricType_HISTOGRAM:
			sum += float64(m.GetHistogram().GetSampleCount())
		}
	}
	return sum, found
}
