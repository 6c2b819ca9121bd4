package main

import (
	"fmt"
	"log/slog"
	"os"
	"strings"

	"github.com/spf13/cobra"
)

// defaultDataDir is where the platform keeps its state unless --data says
// otherwise.
const defaultDataDir = "./fieldtrust-data"

// addDataFlag adds --data to a command that works on a data directory.
func addDataFlag(c *cobra.Command, dir *string) {
	c.Flags().StringVar(dir, "data", defaultDataDir, "platform data directory")
}

// addLogFlags adds --log-level and --log-format; level is the default.
func addLogFlags(c *cobra.Command, level, format *string, def string) {
	c.Flags().StringVar(level, "log-level", def, "log level: debug, info, warn or error")
	c.Flags().StringVar(format, "log-format", "text", "log format: text or json")
}

// newLogger builds the one logger a command injects into the packages it
// wires; logs go to stderr so stdout stays for results.
func newLogger(level, format string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, usageError{fmt.Errorf("--log-level %q: use debug, info, warn or error", level)}
	}
	opts := &slog.HandlerOptions{Level: lv}
	switch strings.ToLower(format) {
	case "text":
		return slog.New(slog.NewTextHandler(os.Stderr, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(os.Stderr, opts)), nil
	}
	return nil, usageError{fmt.Errorf("--log-format %q: use text or json", format)}
}
