package schema

/*
#cgo pkg-config: libxml-2.0
#include <stdlib.h>
#include <string.h>
#include <libxml/parser.h>
#include <libxml/xmlschemas.h>
#include <libxml/xmlerror.h>
#include <libxml/parserInternals.h>

// The vendored schemas, registered once from Go before any use.
typedef struct { char *url; const char *data; int len; } ft_entry;
static ft_entry *ft_table;
static int ft_count;

static void ft_add(char *url, const char *data, int len) {
	ft_table = realloc(ft_table, sizeof(ft_entry) * (ft_count + 1));
	ft_table[ft_count].url = url;
	ft_table[ft_count].data = data;
	ft_table[ft_count].len = len;
	ft_count++;
}

// ft_loader resolves only the vendored schemas: libxml2 never opens a file
// or a network connection on our behalf.
static xmlParserInputPtr ft_loader(const char *url, const char *id, xmlParserCtxtPtr ctxt) {
	if (url != NULL) {
		for (int i = 0; i < ft_count; i++) {
			if (strcmp(url, ft_table[i].url) == 0) {
				xmlParserInputBufferPtr buf = xmlParserInputBufferCreateMem(ft_table[i].data, ft_table[i].len, XML_CHAR_ENCODING_NONE);
				if (buf == NULL) return NULL;
				xmlParserInputPtr in = xmlNewIOInputStream(ctxt, buf, XML_CHAR_ENCODING_NONE);
				if (in == NULL) { xmlFreeParserInputBuffer(buf); return NULL; }
				in->filename = (char *) xmlStrdup((const xmlChar *) url);
				return in;
			}
		}
	}
	return NULL;
}

static void ft_init(void) {
	xmlInitParser();
	xmlSetExternalEntityLoader(ft_loader);
}

// Errors are collected as "line\tmessage\n" records, at most ft_maxerr.
typedef struct { char *buf; size_t len, cap; int count, dropped; } ft_errs;
enum { ft_maxerr = 100 };

static void ft_append(ft_errs *e, const char *s, size_t n) {
	if (e->len + n + 1 > e->cap) {
		size_t cap = (e->cap + n + 1) * 2;
		char *b = realloc(e->buf, cap);
		if (b == NULL) return;
		e->buf = b; e->cap = cap;
	}
	memcpy(e->buf + e->len, s, n);
	e->len += n;
	e->buf[e->len] = 0;
}

static void ft_error(void *ctx, xmlErrorPtr err) {
	ft_errs *e = ctx;
	if (err == NULL) return;
	if (e->count >= ft_maxerr) { e->dropped++; return; }
	e->count++;
	char line[32];
	int n = snprintf(line, sizeof line, "%d\t", err->line);
	ft_append(e, line, n);
	const char *msg = err->message ? err->message : "error";
	size_t m = strlen(msg);
	while (m > 0 && (msg[m-1] == '\n' || msg[m-1] == ' ')) m--;
	for (size_t i = 0; i < m; i++) {
		char c = msg[i] == '\n' || msg[i] == '\t' ? ' ' : msg[i];
		ft_append(e, &c, 1);
	}
	ft_append(e, "\n", 1);
}

static xmlSchemaPtr ft_compile(const char *url, ft_errs *e) {
	xmlSchemaParserCtxtPtr pc = xmlSchemaNewParserCtxt(url);
	if (pc == NULL) return NULL;
	xmlSchemaSetParserStructuredErrors(pc, ft_error, e);
	xmlSchemaPtr s = xmlSchemaParse(pc);
	xmlSchemaFreeParserCtxt(pc);
	return s;
}

// ft_validate parses the document (no network, no DTD loading, no entity
// substitution) and validates it. It returns 0 when valid, >0 when invalid,
// <0 when it could not be done.
static int ft_validate(xmlSchemaPtr s, const char *doc, int len, ft_errs *e) {
	xmlParserCtxtPtr pctx = xmlNewParserCtxt();
	if (pctx == NULL) return -1;
	xmlSetStructuredErrorFunc(e, ft_error);
	xmlDocPtr d = xmlCtxtReadMemory(pctx, doc, len, "dcc.xml", NULL, XML_PARSE_NONET | XML_PARSE_NOCDATA);
	xmlSetStructuredErrorFunc(NULL, NULL);
	xmlFreeParserCtxt(pctx);
	if (d == NULL) return 1;
	xmlSchemaValidCtxtPtr vc = xmlSchemaNewValidCtxt(s);
	if (vc == NULL) { xmlFreeDoc(d); return -1; }
	xmlSchemaSetValidStructuredErrors(vc, ft_error, e);
	int r = xmlSchemaValidateDoc(vc, d);
	xmlSchemaFreeValidCtxt(vc);
	xmlFreeDoc(d);
	return r;
}
*/
import "C"

import (
	"fmt"
	"strconv"
	"strings"
	"sync"
	"unsafe"
)

var initOnce sync.Once

// register hands libxml2 the vendored schemas (copied to C memory, kept
// for the life of the process) under the URLs they are imported by.
func register(files map[string][]byte) {
	initOnce.Do(func() {
		C.ft_init()
		for url, data := range files {
			C.ft_add(C.CString(url), (*C.char)(C.CBytes(data)), C.int(len(data)))
		}
	})
}

// compiled is one compiled schema; libxml2 schemas may be shared by
// concurrent validations.
type compiled struct{ p C.xmlSchemaPtr }

func compile(url string) (*compiled, error) {
	var e C.ft_errs
	defer C.free(unsafe.Pointer(e.buf))
	curl := C.CString(url)
	defer C.free(unsafe.Pointer(curl))
	s := C.ft_compile(curl, &e)
	if s == nil {
		return nil, fmt.Errorf("compile schema %s: %s", url, strings.TrimSpace(C.GoStringN(e.buf, C.int(e.len))))
	}
	return &compiled{p: s}, nil
}

func (c *compiled) validate(doc []byte) (valid bool, errs []Error, err error) {
	if len(doc) == 0 {
		return false, []Error{{Line: 1, Message: "empty document"}}, nil
	}
	var e C.ft_errs
	defer C.free(unsafe.Pointer(e.buf))
	cdoc := C.CBytes(doc)
	defer C.free(cdoc)
	r := C.ft_validate(c.p, (*C.char)(cdoc), C.int(len(doc)), &e)
	if r < 0 {
		return false, nil, fmt.Errorf("schema validation failed to run (libxml2 returned %d)", int(r))
	}
	for _, rec := range strings.Split(C.GoStringN(e.buf, C.int(e.len)), "\n") {
		line, msg, ok := strings.Cut(rec, "\t")
		if !ok {
			continue
		}
		n, _ := strconv.Atoi(line)
		errs = append(errs, Error{Line: n, Message: msg})
	}
	if e.dropped > 0 {
		errs = append(errs, Error{Message: fmt.Sprintf("and %d more errors", int(e.dropped))})
	}
	if r > 0 && len(errs) == 0 {
		errs = []Error{{Message: "the document does not validate"}}
	}
	return r == 0, errs, nil
}
