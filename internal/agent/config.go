package agent

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/fieldtrust/fieldtrust/internal/ident"
	"github.com/fieldtrust/fieldtrust/internal/snapshot"
	"github.com/fieldtrust/fieldtrust/internal/store"
)

// Bounds of a data-source configuration.
const (
	maxConfigBody   = 1 << 20
	maxDataSources  = 64
	maxConfigText   = 256
	maxMappings     = 4096
	maxMappingsBody = 64 << 10
)

// DataSourceConfiguration is an agent's data-source configuration as the
// MindConnect agent-management API defines it. Each data source is one
// measurement device of the agent (its name is the device id), each data
// point a channel of it (its id is the channel name).
type DataSourceConfiguration struct {
	ID              string       `json:"id,omitempty"`
	ETag            string       `json:"eTag,omitempty"`
	ConfigurationID string       `json:"configurationId"`
	DataSources     []DataSource `json:"dataSources"`
}

// DataSource is one data source of a configuration.
type DataSource struct {
	Name        string          `json:"name"`
	Description string          `json:"description,omitempty"`
	DataPoints  []DataPoint     `json:"dataPoints"`
	CustomData  json.RawMessage `json:"customData,omitempty"`
}

// DataPoint is one data point of a data source.
type DataPoint struct {
	ID          string          `json:"id"`
	Name        string          `json:"name"`
	Description string          `json:"description,omitempty"`
	Type        string          `json:"type"`
	Unit        string          `json:"unit"`
	CustomData  json.RawMessage `json:"customData,omitempty"`
}

// Data point types. Snapshots carry numbers: BOOLEAN is stored as 0 or 1,
// the text types are accepted in a configuration but their values are
// refused at the exchange (docs/agents.md).
var numericTypes = map[string]bool{"DOUBLE": true, "INT": true, "LONG": true, "BOOLEAN": true}
var knownTypes = map[string]bool{"DOUBLE": true, "INT": true, "LONG": true, "BOOLEAN": true, "STRING": true, "BIG_STRING": true, "TIMESTAMP": true}

// errConfig is wrapped by every validation error of a configuration or
// mapping.
var errConfig = errors.New("invalid")

func badConfig(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{errConfig}, args...)...)
}

func checkText(what, s string) error {
	if len(s) > maxConfigText || !utf8.ValidString(s) || strings.ContainsFunc(s, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
		return badConfig("%s must be printable UTF-8 of at most %d bytes", what, maxConfigText)
	}
	return nil
}

// validate checks a configuration: every data source name and data point
// id names a device and a channel (identity-element syntax), data point
// ids are unique, units fit a snapshot.
func (c *DataSourceConfiguration) validate() error {
	if c.ConfigurationID == "" {
		return badConfig("configurationId is required")
	}
	if err := checkText("configurationId", c.ConfigurationID); err != nil {
		return err
	}
	if len(c.DataSources) == 0 || len(c.DataSources) > maxDataSources {
		return badConfig("%d data sources; want 1 to %d", len(c.DataSources), maxDataSources)
	}
	ids := map[string]bool{}
	names := map[string]bool{}
	for i, ds := range c.DataSources {
		if err := ident.ValidateElement(ds.Name); err != nil {
			return badConfig("data source %d: its name %q becomes a device id and must be 1-64 of [A-Za-z0-9._-]: %v", i, ds.Name, err)
		}
		if names[ds.Name] {
			return badConfig("data source name %q appears twice", ds.Name)
		}
		names[ds.Name] = true
		if err := checkText("data source description", ds.Description); err != nil {
			return err
		}
		if len(ds.DataPoints) == 0 || len(ds.DataPoints) > snapshot.MaxValues {
			return badConfig("data source %q has %d data points; want 1 to %d", ds.Name, len(ds.DataPoints), snapshot.MaxValues)
		}
		for _, dp := range ds.DataPoints {
			if err := ident.ValidateElement(dp.ID); err != nil {
				return badConfig("data point id %q becomes a channel name and must be 1-64 of [A-Za-z0-9._-]: %v", dp.ID, err)
			}
			if ids[dp.ID] {
				return badConfig("data point id %q appears twice", dp.ID)
			}
			ids[dp.ID] = true
			if !knownTypes[dp.Type] {
				return badConfig("data point %q has type %q; want one of DOUBLE, INT, LONG, BOOLEAN, STRING, BIG_STRING, TIMESTAMP", dp.ID, dp.Type)
			}
			if len(dp.Unit) > 64 || checkText("unit", dp.Unit) != nil {
				return badConfig("data point %q: unit must be printable and at most 64 bytes", dp.ID)
			}
			for what, t := range map[string]string{"name": dp.Name, "description": dp.Description} {
				if err := checkText("data point "+what, t); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// point finds a data point and its data source.
func (c *DataSourceConfiguration) point(id string) (*DataSource, *DataPoint) {
	for i := range c.DataSources {
		ds := &c.DataSources[i]
		for j := range ds.DataPoints {
			if ds.DataPoints[j].ID == id {
				return ds, &ds.DataPoints[j]
			}
		}
	}
	return nil, nil
}

func parseStoredConfig(b []byte) (*DataSourceConfiguration, error) {
	if len(b) == 0 {
		return nil, nil
	}
	var c DataSourceConfiguration
	if err := json.Unmarshal(b, &c); err != nil {
		return nil, err
	}
	return &c, nil
}

// Mapping maps a data point to a device, channel group and channel other
// than its data source and id (the MindConnect data-point mapping: entity,
// property set, property).
type Mapping struct {
	ID              string `json:"id"`
	AgentID         string `json:"agentId"`
	DataPointID     string `json:"dataPointId"`
	DataPointUnit   string `json:"dataPointUnit,omitempty"`
	DataPointType   string `json:"dataPointType,omitempty"`
	EntityID        string `json:"entityId"`
	PropertySetName string `json:"propertySetName"`
	PropertyName    string `json:"propertyName"`
	PropertyUnit    string `json:"propertyUnit,omitempty"`
	PropertyType    string `json:"propertyType,omitempty"`
	QualityEnabled  bool   `json:"qualityEnabled,omitempty"`
	KeepMapping     bool   `json:"keepMapping,omitempty"`
}

func parseStoredMappings(b []byte) ([]Mapping, error) {
	if len(b) == 0 {
		return nil, nil
	}
	var m []Mapping
	err := json.Unmarshal(b, &m)
	return m, err
}

// target is where a data point's values land.
type target struct{ device, group, channel, unit string }

// targets resolves every data point of c through the mappings.
func targets(c *DataSourceConfiguration, maps []Mapping) map[string]target {
	out := map[string]target{}
	for _, ds := range c.DataSources {
		for _, dp := range ds.DataPoints {
			out[dp.ID] = target{device: ds.Name, channel: dp.ID, unit: dp.Unit}
		}
	}
	for _, m := range maps {
		if t, ok := out[m.DataPointID]; ok {
			out[m.DataPointID] = target{device: m.EntityID, group: m.PropertySetName, channel: m.PropertyName, unit: t.unit}
		}
	}
	return out
}

// checkTargets refuses a configuration and mappings under which two data
// points would land on the same device and channel.
func checkTargets(c *DataSourceConfiguration, maps []Mapping) error {
	seen := map[[2]string]string{}
	for id, t := range targets(c, maps) {
		k := [2]string{t.device, t.channel}
		if other, dup := seen[k]; dup {
			return badConfig("data points %q and %q would both be channel %q of device %q", min(id, other), max(id, other), t.channel, t.device)
		}
		seen[k] = id
	}
	return nil
}

// configuration: GET and PUT /agents/{id}/dataSourceConfiguration.
func (s *Service) configuration(w http.ResponseWriter, r *http.Request) {
	a, err := s.authenticate(r)
	if err == nil && r.PathValue("id") != a.ClientID {
		err = refuse(http.StatusForbidden, "forbidden", "an agent may read and write only its own configuration", nil)
	}
	if err == nil {
		if r.Method == http.MethodGet {
			err = s.getConfiguration(w, a)
		} else {
			err = s.putConfiguration(w, r, a)
		}
	}
	if err != nil {
		s.fail(w, r, "configuration", a.ClientID, err)
	}
}

func (s *Service) getConfiguration(w http.ResponseWriter, a store.Agent) error {
	c, err := parseStoredConfig(a.Config)
	if err != nil {
		return err
	}
	if c == nil {
		return refuse(http.StatusNotFound, "not_found", "the agent has no data-source configuration yet; PUT one", nil)
	}
	w.Header().Set("ETag", strconv.FormatInt(a.ConfigETag, 10))
	writeJSON(w, http.StatusOK, c)
	return nil
}

func (s *Service) putConfiguration(w http.ResponseWriter, r *http.Request, a store.Agent) error {
	match := strings.Trim(r.Header.Get("If-Match"), `"`)
	if match == "" {
		return refuse(http.StatusPreconditionRequired, errInvalidRequest, "If-Match with the configuration's eTag is required (0 for the first)", nil)
	}
	etag, err := strconv.ParseInt(match, 10, 64)
	if err != nil || etag < 0 {
		return refuse(http.StatusBadRequest, errInvalidRequest, "If-Match must be a number (the eTag)", nil)
	}
	body, rf := readBody(r, maxConfigBody)
	if rf != nil {
		return rf
	}
	var c DataSourceConfiguration
	dec := json.NewDecoder(bytes.NewReader(body))
	if err := dec.Decode(&c); err != nil {
		return refuse(http.StatusBadRequest, errInvalidRequest, "the body is not a data-source configuration: "+err.Error(), err)
	}
	if err := c.validate(); err != nil {
		return refuse(http.StatusBadRequest, errInvalidRequest, err.Error(), nil)
	}
	maps, err := parseStoredMappings(a.Mappings)
	if err != nil {
		return err
	}
	// Mappings of data points the new configuration drops go with them.
	kept := maps[:0:0]
	for _, m := range maps {
		if _, dp := c.point(m.DataPointID); dp != nil {
			kept = append(kept, m)
		}
	}
	if err := checkTargets(&c, kept); err != nil {
		return refuse(http.StatusBadRequest, errInvalidRequest, err.Error(), nil)
	}
	if etag != a.ConfigETag {
		return refuse(http.StatusPreconditionFailed, "precondition_failed", fmt.Sprintf("If-Match %d is not the current eTag %d; GET the configuration and try again", etag, a.ConfigETag), nil)
	}
	a.ConfigETag++
	c.ID, c.ETag = a.ClientID, strconv.FormatInt(a.ConfigETag, 10)
	if a.Config, err = json.Marshal(&c); err != nil {
		return err
	}
	if a.Mappings, err = json.Marshal(kept); err != nil {
		return err
	}
	if _, err := s.updateAgent(r.Context(), a); errors.Is(err, store.ErrStale) {
		return refuse(http.StatusPreconditionFailed, "precondition_failed", "the configuration changed meanwhile; GET it and try again", err)
	} else if err != nil {
		return err
	}
	s.metrics.requests.WithLabelValues("configuration").Inc()
	s.log.Info("agent data-source configuration stored", "agent", a.ClientID, "configuration", c.ConfigurationID, "etag", a.ConfigETag)
	w.Header().Set("ETag", c.ETag)
	writeJSON(w, http.StatusOK, &c)
	return nil
}

// mappingsPage is a page of mappings as the MindConnect API returns it.
type mappingsPage struct {
	Content []Mapping `json:"content"`
	Last    bool      `json:"last"`
	First   bool      `json:"first"`
	Total   int       `json:"totalElements"`
	Pages   int       `json:"totalPages"`
	Size    int       `json:"size"`
	Number  int       `json:"number"`
	Count   int       `json:"numberOfElements"`
}

// mappings: GET, POST /dataPointMappings and DELETE /dataPointMappings/{id}.
func (s *Service) mappings(w http.ResponseWriter, r *http.Request) {
	a, err := s.authenticate(r)
	if err == nil {
		switch r.Method {
		case http.MethodGet:
			err = s.listMappings(w, r, a)
		case http.MethodPost:
			err = s.postMapping(w, r, a)
		default:
			err = s.deleteMapping(w, r, a)
		}
	}
	if err != nil {
		s.fail(w, r, "mappings", a.ClientID, err)
	}
}

func (s *Service) listMappings(w http.ResponseWriter, r *http.Request, a store.Agent) error {
	if f := r.URL.Query().Get("filter"); f != "" {
		var filter struct {
			AgentID string `json:"agentId"`
		}
		if err := json.Unmarshal([]byte(f), &filter); err != nil {
			return refuse(http.StatusBadRequest, errInvalidRequest, `filter must be JSON like {"agentId":"..."}`, err)
		}
		if filter.AgentID != "" && filter.AgentID != a.ClientID {
			return refuse(http.StatusForbidden, "forbidden", "an agent may list only its own mappings", nil)
		}
	}
	maps, err := parseStoredMappings(a.Mappings)
	if err != nil {
		return err
	}
	if maps == nil {
		maps = []Mapping{}
	}
	writeJSON(w, http.StatusOK, mappingsPage{Content: maps, First: true, Last: true, Total: len(maps), Pages: 1, Size: len(maps), Count: len(maps)})
	return nil
}

func (s *Service) postMapping(w http.ResponseWriter, r *http.Request, a store.Agent) error {
	body, rf := readBody(r, maxMappingsBody)
	if rf != nil {
		return rf
	}
	var m Mapping
	if err := json.Unmarshal(body, &m); err != nil {
		return refuse(http.StatusBadRequest, errInvalidRequest, "the body is not a data-point mapping: "+err.Error(), err)
	}
	if m.AgentID != a.ClientID {
		return refuse(http.StatusForbidden, "forbidden", "agentId must be the agent's own client id", nil)
	}
	c, err := parseStoredConfig(a.Config)
	if err != nil {
		return err
	}
	if c == nil {
		return refuse(http.StatusBadRequest, errInvalidRequest, "PUT a data-source configuration before mapping its data points", nil)
	}
	_, dp := c.point(m.DataPointID)
	if dp == nil {
		return refuse(http.StatusBadRequest, errInvalidRequest, fmt.Sprintf("data point %q is not in the agent's data-source configuration", m.DataPointID), nil)
	}
	for what, v := range map[string]string{"entityId (the device id)": m.EntityID, "propertySetName (the channel group)": m.PropertySetName, "propertyName (the channel)": m.PropertyName} {
		if err := ident.ValidateElement(v); err != nil {
			return refuse(http.StatusBadRequest, errInvalidRequest, fmt.Sprintf("%s %q must be 1-64 of [A-Za-z0-9._-]", what, v), nil)
		}
	}
	maps, err := parseStoredMappings(a.Mappings)
	if err != nil {
		return err
	}
	for _, old := range maps {
		if old.DataPointID == m.DataPointID {
			return refuse(http.StatusConflict, "conflict", fmt.Sprintf("data point %q is mapped already (mapping %s); delete that mapping first", m.DataPointID, old.ID), nil)
		}
	}
	if len(maps) >= maxMappings {
		return refuse(http.StatusBadRequest, errInvalidRequest, fmt.Sprintf("at most %d mappings per agent", maxMappings), nil)
	}
	m.ID = randomHex(16)
	m.DataPointUnit, m.DataPointType = dp.Unit, dp.Type
	maps = append(maps, m)
	if err := checkTargets(c, maps); err != nil {
		return refuse(http.StatusConflict, "conflict", err.Error(), nil)
	}
	if a.Mappings, err = json.Marshal(maps); err != nil {
		return err
	}
	if _, err := s.updateAgent(r.Context(), a); errors.Is(err, store.ErrStale) {
		return refuse(http.StatusConflict, "conflict", "the agent's mappings changed meanwhile; retry", err)
	} else if err != nil {
		return err
	}
	s.metrics.requests.WithLabelValues("mappings").Inc()
	writeJSON(w, http.StatusCreated, m)
	return nil
}

func (s *Service) deleteMapping(w http.ResponseWriter, r *http.Request, a store.Agent) error {
	id := r.PathValue("id")
	maps, err := parseStoredMappings(a.Mappings)
	if err != nil {
		return err
	}
	kept := maps[:0:0]
	for _, m := range maps {
		if m.ID != id {
			kept = append(kept, m)
		}
	}
	if len(kept) == len(maps) {
		return refuse(http.StatusNotFound, "not_found", "no such mapping of this agent", nil)
	}
	if a.Mappings, err = json.Marshal(kept); err != nil {
		return err
	}
	if _, err := s.updateAgent(r.Context(), a); errors.Is(err, store.ErrStale) {
		return refuse(http.StatusConflict, "conflict", "the agent's mappings changed meanwhile; retry", err)
	} else if err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}
