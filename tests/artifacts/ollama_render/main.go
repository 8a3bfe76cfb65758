// Renders a Modelfile TEMPLATE the way Ollama does: Go's text/template over Ollama's values.
//
//	echo '{"template": "...", "system": "...", "messages": [...]}' | go run tests/artifacts/ollama_render/main.go
//
// As Ollama's server does, a request with no system message gets the Modelfile's SYSTEM as its first
// message; as its template package does, consecutive messages of one role are collated, every system
// message stays in .Messages, and .System holds the system messages joined.
package main

import (
	"encoding/json"
	"os"
	"strings"
	"text/template"
)

type Message struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

type Request struct {
	Template string    `json:"template"`
	System   string    `json:"system"`
	Messages []Message `json:"messages"`
}

func main() {
	var request Request
	if err := json.NewDecoder(os.Stdin).Decode(&request); err != nil {
		panic(err)
	}
	messages := request.Messages
	hasSystem := false
	for _, m := range messages {
		hasSystem = hasSystem || m.Role == "system"
	}
	if !hasSystem && request.System != "" {
		messages = append([]Message{{Role: "system", Content: request.System}}, messages...)
	}
	var system []string
	var collated []*Message
	for i := range messages {
		m := messages[i]
		if m.Role == "system" {
			system = append(system, m.Content)
		}
		if len(collated) > 0 && collated[len(collated)-1].Role == m.Role {
			collated[len(collated)-1].Content += "\n\n" + m.Content
		} else {
			collated = append(collated, &m)
		}
	}
	tmpl := template.Must(template.New("").Option("missingkey=zero").Parse(request.Template))
	values := map[string]any{"Messages": collated, "System": strings.Join(system, "\n\n"), "Prompt": "", "Response": ""}
	if err := tmpl.Execute(os.Stdout, values); err != nil {
		panic(err)
	}
}
