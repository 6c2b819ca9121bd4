// Package tacstest holds the design thesis's topic-access table (Table
// 4.1), which must hold exactly in the pure rules (package tacs), through
// the real broker, and through real Mosquitto clients: one table, three
// checks.
package tacstest

// Row is one row of the table: an identity path, a subscription filter,
// and whether the subscription is allowed.
type Row struct {
	Identity, Request string
	Allowed           bool
}

// ThesisTable is design thesis Table 4.1.
var ThesisTable = []Row{
	{"ms-acc-1", "ms-acc-1/#", true},
	{"ms-acc-1", "ms-acc-1/acc-1/dev-1/snapshots", true},
	{"ms-acc-1", "#", false},
	{"ms-acc-1/acc-1", "ms-acc-1/#", false},
	{"ms-acc-1/acc-1", "ms-acc-1/acc-1", true},
	{"ms-acc-1/acc-1", "ms-acc-1/acc-1/#", true},
	{"ms-acc-1/acc-1", "ms-acc-1/acc-1/dev-1/snapshots", true},
	{"ms-acc-1/acc-1/dev-1", "ms-acc-1/acc-1/dev-1/#", true},
	{"ms-acc-1/acc-1/dev-1", "ms-acc-2/acc-1/dev-1/#", false},
	{"ms-acc-1/acc-1/dev-1", "ms-acc-1/acc-1/dev-2/snapshots", false},
	{"ms-acc-1/acc-1/dev-1", "ms-acc-1/acc-1/#", false},
	{"ms-acc-2", "ms-acc-1/#", false},
	{"ms-acc-2", "ms-acc-2/acc-1/#", true},
	{"ms-acc-2/acc-1/dev-2", "ms-acc-2/acc-1/dev-2/#", true},
	{"ms-acc-2/acc-1/dev-2", "ms-acc-2/acc-1/dev-1/#", false},
}
