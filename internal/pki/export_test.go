package pki

import "github.com/fieldtrust/fieldtrust/internal/store"

func storeFilter(name string) store.CertFilter { return store.CertFilter{Name: name} }
