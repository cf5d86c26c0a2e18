// Package measure turns what an experiment's clone does into an
// observation: response times into an HDR histogram (Recorder), windows
// with a warm-up and a stopping rule (MeasureWindow), and energy from a
// hardware counter (RAPLMeter) or a power model fed with CPU time
// (ModelMeter).
//
// Every figure says how it was measured: a Summary carries its window and
// sample count, p95 comes with a 95% confidence interval, a Result says why
// its window stopped and how long the warm-up was, and an energy figure
// names its source ("rapl" or "model") and, for a model, which one.
package measure
