// Command vmferry-vcsim runs govmomi's vCenter simulator for the vmferry lab.
//
// It is built in GOPATH mode against Debian's golang-github-vmware-govmomi-dev,
// with a patched copy of the simulator package placed first in GOPATH (see
// snapshot-fixes.patch). Once listening it writes one JSON line describing the
// endpoint to stdout and, if -info is set, atomically to that file, so a
// supervisor can poll for a complete description instead of parsing logs.
package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha1"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"flag"
	"fmt"
	"log"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/vmware/govmomi/simulator"
	// The vAPI REST endpoints (/rest/com/vmware/cis/...): sessions and tagging, as upstream vcsim registers
	// them. Its init adds itself to the endpoints NewServer runs when RegisterEndpoints is set.
	_ "github.com/vmware/govmomi/vapi/simulator"
)

// sessionPath is where a vAPI client logs in (POST with basic auth) on vCenter 6.5 and later.
const sessionPath = "/rest/com/vmware/cis/session"

// requireCredentials refuses a vAPI login whose basic-auth credentials are not the lab's: the vapi simulator
// takes any non-empty user and password, a vCenter answers 401.
func requireCredentials(next http.Handler, user, password string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost && r.URL.Query().Get("~action") == "" {
			u, p, ok := r.BasicAuth()
			if !ok || subtle.ConstantTimeCompare([]byte(u), []byte(user)) != 1 ||
				subtle.ConstantTimeCompare([]byte(p), []byte(password)) != 1 {
				w.WriteHeader(http.StatusUnauthorized)
				return
			}
		}
		next.ServeHTTP(w, r)
	})
}

type info struct {
	URL        string `json:"url"`
	Host       string `json:"host"`
	Port       int    `json:"port"`
	User       string `json:"user"`
	Password   string `json:"password"`
	Thumbprint string `json:"thumbprint_sha1"`
	CertPEM    string `json:"certificate_pem"`
	Pid        int    `json:"pid"`
}

// selfSigned makes a fresh certificate per run. httptest's built-in
// LocalhostCert has a 1024-bit RSA key that OpenSSL's default security level
// rejects, and a per-run certificate shows clients really pin what the lab
// reports instead of a constant.
func selfSigned(host string) (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		return tls.Certificate{}, err
	}
	tmpl := x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{Organization: []string{"vmferry lab"}, CommonName: "vmferry-vcsim"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(10 * 365 * 24 * time.Hour),
		// CA so that clients can use the certificate itself as their only trust anchor.
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:              []string{"localhost"},
		IPAddresses:           []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("::1")},
	}
	if ip := net.ParseIP(host); ip != nil && !ip.IsLoopback() {
		tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
	} else if ip == nil && host != "localhost" {
		tmpl.DNSNames = append(tmpl.DNSNames, host)
	}
	der, err := x509.CreateCertificate(rand.Reader, &tmpl, &tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}

func main() {
	host := flag.String("host", "127.0.0.1", "address to listen on")
	port := flag.Int("port", 0, "port to listen on (0 = any free port)")
	infoPath := flag.String("info", "", "write the endpoint description (JSON) to this file")
	machines := flag.Int("machines-per-pool", 0, "VMs per resource pool (the model has two pools); 0 = the model's default")
	cbtSlice := flag.Int64("cbt-slice", simulator.CBTSliceBytes, "bytes of a disk one QueryChangedDiskAreas answer covers")
	flag.Parse()

	simulator.CBTSliceBytes = *cbtSlice
	model := simulator.VPX()
	if *machines > 0 {
		model.Machine = *machines
	}
	if err := model.Create(); err != nil {
		log.Fatalf("create model: %v", err)
	}
	cert, err := selfSigned(*host)
	if err != nil {
		log.Fatalf("certificate: %v", err)
	}
	model.Service.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	// A per-run password: vcsim accepts any login unless the listen URL names one, and the lab must refuse
	// wrong credentials the way a vCenter does.
	secret := make([]byte, 16)
	if _, err := rand.Read(secret); err != nil {
		log.Fatalf("password: %v", err)
	}
	model.Service.Listen = &url.URL{
		Host: net.JoinHostPort(*host, strconv.Itoa(*port)),
		User: url.UserPassword("vmferry-lab", fmt.Sprintf("%x", secret)),
	}

	model.Service.RegisterEndpoints = true
	// Runs after the vapi simulator's endpoint (registered at init): the exact session path takes precedence
	// over its /rest/ subtree, so every login passes the credential check first.
	simulator.RegisterEndpoint(func(s *simulator.Service, _ *simulator.Registry) {
		vapi, pattern := s.ServeMux.Handler(&http.Request{Method: http.MethodPost, URL: &url.URL{Path: sessionPath}})
		if pattern == "" {
			log.Fatalf("the vAPI simulator serves no %s", sessionPath)
		}
		password, _ := s.Listen.User.Password()
		s.ServeMux.Handle(sessionPath, requireCredentials(vapi, s.Listen.User.Username(), password))
	})

	server := model.Service.NewServer()

	password, _ := server.URL.User.Password()
	sum := sha1.Sum(server.Certificate().Raw)
	hexParts := make([]string, len(sum))
	for i, b := range sum {
		hexParts[i] = fmt.Sprintf("%02X", b)
	}
	listenPort, _ := strconv.Atoi(server.URL.Port())
	desc := info{
		URL:        server.URL.String(),
		Host:       server.URL.Hostname(),
		Port:       listenPort,
		User:       server.URL.User.Username(),
		Password:   password,
		Thumbprint: strings.Join(hexParts, ":"),
		CertPEM:    string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: server.Certificate().Raw})),
		Pid:        os.Getpid(),
	}
	line, err := json.Marshal(desc)
	if err != nil {
		log.Fatalf("encode info: %v", err)
	}
	if *infoPath != "" {
		// Rename makes the file appear complete or not at all.
		tmp := filepath.Join(filepath.Dir(*infoPath), "."+filepath.Base(*infoPath)+".tmp")
		if err := os.WriteFile(tmp, append(line, '\n'), 0o600); err != nil {
			log.Fatalf("write info: %v", err)
		}
		if err := os.Rename(tmp, *infoPath); err != nil {
			log.Fatalf("rename info: %v", err)
		}
	}
	fmt.Println(string(line))

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	<-sig

	server.Close()
	// Remove deletes the datastore temp directories the model created.
	model.Remove()
}
